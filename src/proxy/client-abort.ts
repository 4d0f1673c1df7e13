/** The client's cancellation of a request, shaped like an AbortSignal. */
import type { AbortLike } from "./upstream/types.ts";

type AbortListener = ((this: unknown) => void) | { handleEvent(): void };

/**
 * An AbortSignal-shaped cancellation. Its first listener is kept in a field:
 * a request has one (its upstream exchange), so the common case allocates nothing.
 */
export class ClientAbort implements AbortLike {
  aborted = false;
  reason: unknown = undefined;
  private first: AbortListener | null = null;
  private more: AbortListener[] | null = null;

  addEventListener(_type: "abort", listener: AbortListener): void {
    if (this.first === null) this.first = listener;
    else if (this.more === null) this.more = [listener];
    else this.more.push(listener);
  }

  removeEventListener(_type: "abort", listener: AbortListener): void {
    if (this.first === listener) this.first = null;
    else {
      const i = this.more?.indexOf(listener) ?? -1;
      if (i !== -1) this.more?.splice(i, 1);
    }
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.first === null ? (this.more ?? []) : [this.first, ...(this.more ?? [])];
    this.first = null;
    this.more = null;
    for (const l of listeners) {
      if (typeof l === "function") l.call(this);
      else l.handleEvent();
    }
  }
}
