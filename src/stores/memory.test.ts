import { describeStoreContract } from '../testing.js';
import { MemoryStore } from './memory.js';

describeStoreContract('MemoryStore', () => new MemoryStore());
