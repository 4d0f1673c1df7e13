/** header: a hash of a named request header's value (for example X-Session-Id). */
import type { Decision, RequestFacts, Rule } from "./types.ts";

const MAX_VALUE_LENGTH = 1024;

export class HeaderRule implements Rule {
  readonly name = "header" as const;

  constructor(private readonly header: string) {}

  decide(req: RequestFacts): Decision {
    const value = req.headers.get(this.header);
    if (!value || value.length > MAX_VALUE_LENGTH) return { kind: "none", rule: this.name };
    return { kind: "hash", key: `h:${value}`, rule: this.name };
  }
}
