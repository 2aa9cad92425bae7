import 'reflect-metadata';
import type { AddressInfo } from 'node:net';
import {
  Body,
  Controller,
  ForbiddenException,
  type INestApplication,
  Injectable,
  Module,
  Post,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ExpressAdapter } from '@nestjs/platform-express';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { IdempotencyModule, Idempotent, type NestIdempotencyOptions } from './nestjs.js';

let runs = 0;

@Controller()
class PaymentsController {
  @Post('pay')
  pay(@Body() body: unknown) {
    return { runs: ++runs, body };
  }

  @Post('off')
  @Idempotent(false)
  off() {
    return { runs: ++runs };
  }

  @Post('marked')
  @Idempotent()
  marked() {
    return { runs: ++runs };
  }

  @Post('strict')
  @Idempotent({ required: true })
  strict() {
    return { runs: ++runs };
  }

  @Post('forbidden')
  forbidden() {
    runs++;
    throw new ForbiddenException(`not yours ${runs}`);
  }

  @Post('crash')
  crash() {
    runs++;
    throw new Error('unexpected');
  }
}

let nest: INestApplication | undefined;

async function start(imports: unknown[], platform: 'express' | 'fastify' = 'express'): Promise<string> {
  runs = 0;
  @Module({ imports: imports as never[], controllers: [PaymentsController] })
  class TestModule {}
  const adapter = platform === 'express' ? new ExpressAdapter() : new FastifyAdapter();
  nest = await NestFactory.create(TestModule, adapter as never, {
    logger: false,
    rawBody: true,
    abortOnError: false,
  });
  await nest.listen(0, '127.0.0.1');
  return `http://127.0.0.1:${(nest.getHttpServer().address() as AddressInfo).port}`;
}

const post = (url: string, key: string | undefined, body = '{"amount":1}') =>
  fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
    body,
  });

afterEach(async () => {
  await nest?.close();
  nest = undefined;
});

describe.each(['express', 'fastify'] as const)('oncely/nestjs on %s', (platform) => {
  it('R1, R2: a keyed POST runs once; the handler still gets the parsed body', async () => {
    const url = await start([IdempotencyModule.forRoot()], platform);
    const first = await post(`${url}/pay`, 'key-00000001', '{"amount":42}');
    expect(first.status).toBe(201);
    const text = await first.text();
    expect(JSON.parse(text)).toEqual({ runs: 1, body: { amount: 42 } });
    const second = await post(`${url}/pay`, 'key-00000001', '{"amount":42}');
    expect(second.status).toBe(201);
    expect(await second.text()).toBe(text);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
  });

  it('R3: an HttpException is recorded as the response the exception filter sends', async () => {
    const url = await start([IdempotencyModule.forRoot()], platform);
    const first = await post(`${url}/forbidden`, 'key-00000001');
    expect(first.status).toBe(403);
    const text = await first.text();
    expect(JSON.parse(text)).toMatchObject({ statusCode: 403, message: 'not yours 1' });
    const second = await post(`${url}/forbidden`, 'key-00000001');
    expect(second.status).toBe(403);
    expect(await second.text()).toBe(text);
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(1);
  });

  it('R3: an unexpected error is recorded as the 500 Nest sends for it', async () => {
    const url = await start([IdempotencyModule.forRoot()], platform);
    const first = await post(`${url}/crash`, 'key-00000001');
    expect(first.status).toBe(500);
    const text = await first.text();
    const second = await post(`${url}/crash`, 'key-00000001');
    expect(second.status).toBe(500);
    expect(await second.text()).toBe(text);
    expect(runs).toBe(1);
  });

  it('M1: @Idempotent(false) opts a handler out', async () => {
    const url = await start([IdempotencyModule.forRoot()], platform);
    await post(`${url}/off`, 'key-00000001');
    const second = await post(`${url}/off`, 'key-00000001');
    expect(second.headers.get('idempotent-replayed')).toBeNull();
    expect(runs).toBe(2);
  });

  it('M3: @Idempotent({ ...options }) overrides the module options on that handler', async () => {
    const url = await start([IdempotencyModule.forRoot()], platform);
    const strict = await post(`${url}/strict`, undefined);
    expect(strict.status).toBe(400);
    expect(((await strict.json()) as { code: string }).code).toBe('idempotency_key_missing');
    expect((await post(`${url}/pay`, undefined)).status).toBe(201);
    expect(runs).toBe(1);
  });
});

describe('oncely/nestjs module', () => {
  it('M1: with interceptAll: false only @Idempotent() handlers are protected', async () => {
    const url = await start([IdempotencyModule.forRoot({ interceptAll: false })]);
    await post(`${url}/pay`, 'key-00000001');
    expect((await post(`${url}/pay`, 'key-00000001')).headers.get('idempotent-replayed')).toBeNull();
    await post(`${url}/marked`, 'key-00000002');
    expect((await post(`${url}/marked`, 'key-00000002')).headers.get('idempotent-replayed')).toBe('true');
    expect(runs).toBe(3);
  });

  it('forRootAsync builds the options from injected providers', async () => {
    const CONFIG = Symbol('config');
    @Injectable()
    class Config {
      readonly idempotency: NestIdempotencyOptions = { required: true };
    }
    @Module({ providers: [{ provide: CONFIG, useClass: Config }], exports: [CONFIG] })
    class ConfigModule {}
    const url = await start([
      IdempotencyModule.forRootAsync({
        imports: [ConfigModule],
        inject: [CONFIG],
        useFactory: async (config: Config) => config.idempotency,
      }),
    ]);
    const missing = await post(`${url}/pay`, undefined);
    expect(missing.status).toBe(400);
    expect(((await missing.json()) as { code: string }).code).toBe('idempotency_key_missing');
  });

  it('options are validated when the interceptor is created', async () => {
    await expect(start([IdempotencyModule.forRoot({ ttlMs: -5 })])).rejects.toThrow(/options\.ttlMs/);
  });
});
