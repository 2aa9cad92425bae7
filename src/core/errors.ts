/**
 * @module The errors oncely answers with, each one RFC 9457 problem (SPEC P1).
 */

/** Stable machine-readable codes of every problem oncely sends (SPEC P1). */
export type ProblemCode =
  | 'idempotency_key_invalid'
  | 'idempotency_key_missing'
  | 'idempotency_key_not_allowed'
  | 'idempotency_key_in_use'
  | 'request_too_large'
  | 'idempotency_key_reused'
  | 'idempotency_store_unavailable'
  | 'response_incomplete'
  | 'upstream_unreachable'
  | 'upstream_failed'
  | 'upstream_timeout';

/** An RFC 9457 problem details object as oncely sends it. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: ProblemCode;
}

const PROBLEM_TYPE_BASE = 'https://oncely.dev/problems/';

/**
 * Base class of every outcome oncely answers itself. `status` and `code` are stable;
 * `toProblem()` renders the body, so the status, the code and the docs table cannot drift apart.
 */
export class IdempotencyError extends Error {
  readonly status: number;
  readonly code: ProblemCode;
  readonly title: string;
  /** Seconds a client should wait before retrying, sent as `Retry-After`. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    status: number,
    code: ProblemCode,
    title: string,
    detail: string,
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(detail, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.title = title;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  toProblem(): Problem {
    return {
      type: PROBLEM_TYPE_BASE + this.code.replaceAll('_', '-'),
      title: this.title,
      status: this.status,
      detail: this.message,
      code: this.code,
    };
  }
}

/** K3/K4: the key is malformed, or sent more than once. */
export class InvalidKeyError extends IdempotencyError {
  constructor(detail: string) {
    super(400, 'idempotency_key_invalid', 'Invalid Idempotency-Key', detail);
  }
}

/** M3: `required: true` and the request carries no key. */
export class MissingKeyError extends IdempotencyError {
  constructor(method: string) {
    super(
      400,
      'idempotency_key_missing',
      'Idempotency-Key required',
      `${method} requests to this endpoint must carry an Idempotency-Key header.`,
    );
  }
}

/** M2 with `onSafeMethodKey: 'reject'`. */
export class KeyNotAllowedError extends IdempotencyError {
  constructor(method: string) {
    super(
      400,
      'idempotency_key_not_allowed',
      'Idempotency-Key not allowed',
      `${method} is already idempotent; send it without an Idempotency-Key header.`,
    );
  }
}

/** L2: a request with the same key is still being processed. */
export class KeyInUseError extends IdempotencyError {
  constructor() {
    super(
      409,
      'idempotency_key_in_use',
      'Request in progress',
      'A request with this Idempotency-Key is still being processed. Retry after it finishes.',
      { retryAfterSeconds: 1 },
    );
  }
}

/** R7: the keyed request body is larger than `maxRequestBytes`. */
export class RequestTooLargeError extends IdempotencyError {
  constructor(limit: number) {
    super(
      413,
      'request_too_large',
      'Request body too large',
      `Requests with an Idempotency-Key may carry at most ${limit} bytes of body.`,
    );
  }
}

/** F2: the key was used before with a different request. */
export class KeyReusedError extends IdempotencyError {
  constructor() {
    super(
      422,
      'idempotency_key_reused',
      'Idempotency-Key reused',
      'This Idempotency-Key was already used with a different request (method, path, content type or body). Use a new key for a new request.',
    );
  }
}

/** S2: the store could not be reached or failed; fail closed. */
export class StoreUnavailableError extends IdempotencyError {
  constructor(cause?: unknown) {
    super(
      503,
      'idempotency_store_unavailable',
      'Idempotency store unavailable',
      'The idempotency store is unavailable, so this request was not processed. Retry later with the same key.',
      { cause, retryAfterSeconds: 1 },
    );
  }
}

/** R3: the handler failed before its response was complete; recorded so a retry never re-runs it. */
export class ResponseIncompleteError extends IdempotencyError {
  constructor(cause?: unknown) {
    super(
      500,
      'response_incomplete',
      'Response incomplete',
      'The request was processed but its response could not be completed. Retrying with the same key returns this answer.',
      { cause },
    );
  }
}

/** G2: the gateway could not reach its upstream; nothing was sent, so the key is released unrecorded. */
export class UpstreamUnreachableError extends IdempotencyError {
  constructor(cause?: unknown) {
    super(
      502,
      'upstream_unreachable',
      'Upstream unreachable',
      'The gateway could not connect to the upstream, so the request was not sent. Retry with the same key.',
      { cause, retryAfterSeconds: 1 },
    );
  }
}

/** G2: the upstream failed after the request was sent; it may have acted, so this outcome is recorded. */
export class UpstreamFailedError extends IdempotencyError {
  constructor(cause?: unknown) {
    super(
      502,
      'upstream_failed',
      'Upstream failed',
      'The upstream received the request but its response broke off. It may have acted; retrying with the same key returns this answer, so check the resource before using a new key.',
      { cause },
    );
  }
}

/** G2: the upstream did not answer within the gateway's timeout after the request was sent; recorded. */
export class UpstreamTimeoutError extends IdempotencyError {
  constructor(ms: number, cause?: unknown) {
    super(
      504,
      'upstream_timeout',
      'Upstream timed out',
      `The upstream received the request but did not answer within ${ms} ms. It may have acted; retrying with the same key returns this answer, so check the resource before using a new key.`,
      { cause },
    );
  }
}

/** A store operation took longer than `storeTimeoutMs`. */
export class StoreTimeoutError extends Error {
  constructor(operation: string, ms: number) {
    super(`store.${operation}() did not answer within ${ms} ms`);
    this.name = 'StoreTimeoutError';
  }
}
