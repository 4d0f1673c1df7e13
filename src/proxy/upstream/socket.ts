/**
 * Opening a backend socket, shared by the HTTP connection and the WebSocket
 * client: TCP or TLS by the target, its events handed to the socket's owner.
 */
import type { Socket, SocketHandler } from "bun";
import type { UpstreamTarget } from "./types.ts";

/** What owns a backend socket: every event of it lands on one of these. */
export interface SocketOwner {
  /** `ready`: false for TLS, whose socket is usable only after onHandshake. */
  onOpen(socket: Socket<SocketOwner>, ready: boolean): void;
  onHandshake(socket: Socket<SocketOwner>, success: boolean, authError: Error | null): void;
  onConnectError(error: Error): void;
  onData(buf: Uint8Array): void;
  onDrain(): void;
  onError(error: Error): void;
  onClose(error?: Error): void;
}

const TCP_HANDLERS: SocketHandler<SocketOwner> = {
  open: (socket) => socket.data.onOpen(socket, true),
  data: (socket, data) => socket.data.onData(data),
  drain: (socket) => socket.data.onDrain(),
  close: (socket, error) => socket.data.onClose(error),
  error: (socket, error) => socket.data.onError(error),
  connectError: (socket, error) => socket.data.onConnectError(error),
};

/** TLS: open fires before the handshake; the socket is ready only once the certificate is checked. */
const TLS_HANDLERS: SocketHandler<SocketOwner> = {
  ...TCP_HANDLERS,
  open: (socket) => socket.data.onOpen(socket, false),
  handshake: (socket, success, authError) => socket.data.onHandshake(socket, success, authError),
};

function ignore(): void {}

/** Connects to target; a connect that cannot even start is reported through onConnectError. */
export function connectSocket(target: UpstreamTarget, owner: SocketOwner): void {
  const tls = target.tls;
  try {
    Bun.connect<SocketOwner>({
      hostname: target.hostname,
      port: target.port,
      data: owner,
      socket: tls === undefined ? TCP_HANDLERS : TLS_HANDLERS,
      tls: tls && { ca: tls.ca, serverName: tls.serverName, rejectUnauthorized: tls.verify },
    }).catch(ignore); // connectError reports the failure
  } catch (err) {
    owner.onConnectError(err as Error);
  }
}

/** A socket error's code (ECONNREFUSED ...) or message, for logs. */
export function errorDetail(error: unknown): string {
  if (error === null || error === undefined) return "";
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" ? code : String((error as Error).message ?? error);
}
