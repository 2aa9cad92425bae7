/**
 * @module Reading request bodies under a size limit (SPEC R7), shared by the adapters.
 */
import { RequestTooLargeError } from './errors.js';

const EMPTY = new Uint8Array(0);

/**
 * Read a body stream to its end, rejecting with {@link RequestTooLargeError} as soon as more than
 * `limit` bytes arrive. `declaredLength` (a Content-Length) lets an oversized body fail unread.
 */
export async function readLimited(
  stream: AsyncIterable<Uint8Array | string> | null | undefined,
  limit: number,
  declaredLength?: string | null,
): Promise<Uint8Array> {
  if (declaredLength != null && Number(declaredLength) > limit) throw new RequestTooLargeError(limit);
  if (stream == null) return EMPTY;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += bytes.byteLength;
    if (size > limit) throw new RequestTooLargeError(limit);
    chunks.push(bytes);
  }
  if (chunks.length === 0) return EMPTY;
  if (chunks.length === 1) return chunks[0]!;
  return Buffer.concat(chunks, size);
}
