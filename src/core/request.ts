/**
 * @module The framework-neutral request the engine reads.
 */

/** A request as the engine and user callbacks (`fingerprint`, `scope`) see it. */
export interface IdempotencyRequest<Raw = unknown> {
  /** Upper-case method. */
  readonly method: string;
  /** Path with query string, as received (`/payments?x=1`). */
  readonly url: string;
  /** A request header by lower-case name; repeated fields joined with ", ". */
  header(name: string): string | undefined;
  /** The request body bytes (empty when there is none). Read only for keyed requests. */
  readonly body: Uint8Array;
  /** The framework's own request object (node `IncomingMessage`, Fetch `Request`, Koa `ctx`, …). */
  readonly raw: Raw;
}
