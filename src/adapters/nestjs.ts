/**
 * @module oncely/nestjs: IdempotencyModule, IdempotencyInterceptor and @Idempotent() for NestJS 10/11
 * on the Express and Fastify platforms.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  type CallHandler,
  type DynamicModule,
  type ExecutionContext,
  Inject,
  Injectable,
  Module,
  type ModuleMetadata,
  type NestInterceptor,
  SetMetadata,
} from '@nestjs/common';
import { APP_INTERCEPTOR, Reflector } from '@nestjs/core';
import { Observable, type Subscription } from 'rxjs';
import { Engine, type IncomingRequest, type OutgoingResponse, PASS } from '../core/engine.js';
import { RequestTooLargeError } from '../core/errors.js';
import type { IdempotencyOptions } from '../core/options.js';
import { MemoryStore } from '../stores/memory.js';
import { captureResponse, NodeRequest, writeResponse } from './_node-http.js';

/** Module options: the engine's options (`raw` is the platform request) and where they apply. */
export interface NestIdempotencyOptions extends IdempotencyOptions<unknown> {
  /**
   * `true`: every route is protected unless marked `@Idempotent(false)`. `false`: only routes or
   * controllers marked `@Idempotent()` are.
   * @default true
   */
  interceptAll?: boolean;
}

/** Injection token of the module options. */
export const IDEMPOTENCY_OPTIONS = Symbol.for('oncely.nestjs.options');
const IDEMPOTENT_METADATA = 'oncely:idempotent';

/**
 * Mark a route handler or a controller: `@Idempotent()` opts in (needed with `interceptAll: false`),
 * `@Idempotent(false)` opts out, `@Idempotent({ ...options })` overrides the module's options there.
 *
 * @param options `false`, or options merged over the module's (same store unless `store` is given);
 *   defaults to `{}`
 * @example
 * \@Post('payments') \@Idempotent({ ttlMs: 3_600_000 })
 * charge(\@Body() body: ChargeDto) { return this.payments.charge(body); }
 */
export function Idempotent(options: false | IdempotencyOptions<unknown> = {}) {
  return SetMetadata(IDEMPOTENT_METADATA, options);
}

type PlatformRequest = IncomingMessage & { raw?: IncomingMessage; rawBody?: unknown; body?: unknown };
type PlatformResponse = ServerResponse & { raw?: ServerResponse };

/**
 * Applies the idempotency engine to Nest routes. It captures the response at the Node response
 * object underneath the platform (Express `res`, Fastify `reply.raw`), so the recorded response is
 * what Nest sends: handler results, and exceptions after the exception filters render them (R3).
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  readonly #options: IdempotencyOptions<unknown>;
  readonly #interceptAll: boolean;
  readonly #engine: Engine<unknown>;
  readonly #engines = new Map<object, Engine<unknown>>();

  constructor(
    @Inject(IDEMPOTENCY_OPTIONS) options: NestIdempotencyOptions,
    @Inject(Reflector) private readonly reflector: Reflector,
  ) {
    const { interceptAll = true, ...engineOptions } = options ?? {};
    if (typeof interceptAll !== 'boolean') throw new TypeError('options.interceptAll must be true or false');
    // One store for the module and every per-handler override, unless an override names its own.
    this.#options = { ...engineOptions, store: engineOptions.store ?? new MemoryStore() };
    this.#interceptAll = interceptAll;
    this.#engine = new Engine(this.#options);
  }

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const engine = this.#engineFor(context);
    if (engine === undefined) return next.handle();
    const http = context.switchToHttp();
    const req = http.getRequest<PlatformRequest>();
    const res = http.getResponse<PlatformResponse>();
    // Express hands Node's objects; Fastify wraps them (request.raw, reply.raw).
    const nodeReq = req.raw ?? req;
    const nodeRes = res.raw ?? res;
    const incoming: IncomingRequest<unknown> = {
      method: nodeReq.method ?? 'GET',
      url: nodeReq.url ?? '/',
      header: (name) => new NodeRequest(nodeReq, req).header(name),
      readBody: (limit) => bodyBytes(req, nodeReq, limit),
      raw: req,
    };
    const decision = engine.begin(incoming);
    if (decision === PASS) return next.handle();
    return new Observable<unknown>((subscriber) => {
      let inner: Subscription | undefined;
      Promise.resolve(decision).then(
        (decided) => {
          if (decided.action === 'respond') {
            sendSealed(nodeRes, decided.response);
            subscriber.next(null);
            subscriber.complete();
            return;
          }
          if (decided.action === 'pass') {
            inner = next.handle().subscribe(subscriber);
            return;
          }
          const capture = captureResponse(nodeRes, decided.execution);
          const captured = nodeRes.write;
          let wrote = false;
          nodeRes.write = function write(this: ServerResponse, ...args: unknown[]) {
            wrote = true;
            return (captured as (...a: unknown[]) => boolean).apply(this, args);
          } as typeof nodeRes.write;
          inner = next.handle().subscribe({
            next: (value) => subscriber.next(value),
            complete: () => subscriber.complete(),
            error: (error: unknown) => {
              // R3: a response that broke off midway is recorded as a 500 problem; an exception
              // before any byte is left to the exception filters, whose output is captured.
              if (wrote) capture.fail(error);
              subscriber.error(error);
            },
          });
        },
        (error: unknown) => subscriber.error(error),
      );
      return () => inner?.unsubscribe();
    });
  }

  #engineFor(context: ExecutionContext): Engine<unknown> | undefined {
    const handler = context.getHandler();
    const marked = this.reflector.getAllAndOverride<false | IdempotencyOptions<unknown> | undefined>(
      IDEMPOTENT_METADATA,
      [handler, context.getClass()],
    );
    if (marked === false || (marked === undefined && !this.#interceptAll)) return undefined;
    if (marked === undefined || Object.keys(marked).length === 0) return this.#engine;
    let engine = this.#engines.get(handler);
    if (engine === undefined) {
      engine = new Engine({ ...this.#options, ...marked });
      this.#engines.set(handler, engine);
    }
    return engine;
  }
}

/**
 * F1: the request body bytes. Nest's body parsers consume the stream before interceptors run, so
 * oncely reads, in order: `req.rawBody` (`NestFactory.create(…, { rawBody: true })`, byte-exact);
 * the stream itself if no parser touched it (re-armed for the handler); else a canonical form of
 * the parsed body (a Buffer or string as is, anything else as JSON).
 */
async function bodyBytes(req: PlatformRequest, nodeReq: IncomingMessage, limit: number): Promise<Uint8Array> {
  let body: Uint8Array;
  if (Buffer.isBuffer(req.rawBody)) body = req.rawBody;
  else if (!nodeReq.readableEnded && req.body === undefined)
    return new NodeRequest(nodeReq, nodeReq).readBody(limit);
  else if (req.body === undefined || req.body === null) body = new Uint8Array(0);
  else if (Buffer.isBuffer(req.body)) body = req.body;
  else if (typeof req.body === 'string') body = Buffer.from(req.body);
  else body = Buffer.from(JSON.stringify(req.body));
  if (body.byteLength > limit) throw new RequestTooLargeError(limit);
  return body;
}

/**
 * Send a replay or problem at once, then make `res` ignore writes: Nest may still send a result for
 * the skipped handler (routes without `@Res()`), and what went out must stay what was recorded (R2).
 */
function sendSealed(res: ServerResponse, response: OutgoingResponse): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  writeResponse(res, response);
  const ignore = function ignore() {
    return res;
  };
  Object.assign(res, { setHeader: ignore, appendHeader: ignore, removeHeader: ignore, writeHead: ignore });
  Object.assign(res, { write: () => true, end: ignore });
}

/** How {@link IdempotencyModule.forRootAsync} gets its options. */
export interface IdempotencyModuleAsyncOptions extends Pick<ModuleMetadata, 'imports'> {
  useFactory: (...args: never[]) => NestIdempotencyOptions | Promise<NestIdempotencyOptions>;
  inject?: unknown[];
}

/**
 * Registers {@link IdempotencyInterceptor} for the whole application (APP_INTERCEPTOR).
 *
 * @example
 * \@Module({ imports: [IdempotencyModule.forRoot({ store: new RedisStore({ client }) })], controllers: [PaymentsController] })
 * export class AppModule {}
 */
@Module({})
// biome-ignore lint/complexity/noStaticOnlyClass: a Nest module is a class with static forRoot factories
export class IdempotencyModule {
  /**
   * @param options see {@link NestIdempotencyOptions}; `store` defaults to one `MemoryStore`
   */
  static forRoot(options: NestIdempotencyOptions = {}): DynamicModule {
    return dynamicModule([{ provide: IDEMPOTENCY_OPTIONS, useValue: options }], []);
  }

  /**
   * @param options `useFactory` (may be async) with its `inject` tokens and the `imports` they need
   */
  static forRootAsync(options: IdempotencyModuleAsyncOptions): DynamicModule {
    return dynamicModule(
      [
        {
          provide: IDEMPOTENCY_OPTIONS,
          useFactory: options.useFactory as (...args: unknown[]) => NestIdempotencyOptions,
          inject: (options.inject ?? []) as never[],
        },
      ],
      options.imports ?? [],
    );
  }
}

function dynamicModule(
  providers: DynamicModule['providers'] & object,
  imports: ModuleMetadata['imports'] & object,
): DynamicModule {
  return {
    module: IdempotencyModule,
    global: true,
    imports,
    providers: [
      ...providers,
      IdempotencyInterceptor,
      { provide: APP_INTERCEPTOR, useExisting: IdempotencyInterceptor },
    ],
    exports: [IdempotencyInterceptor, IDEMPOTENCY_OPTIONS],
  };
}

export type { IdempotencyOptions } from '../core/options.js';
