// A stand-in build for `--compare` (see bench/floors/README.md): the real package's exports, this folder's adapter.
export * from '../../../dist/index.js';
