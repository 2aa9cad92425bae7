import { honoFixture } from './fixtures/hono.js';
import { describeConformance } from './suite.js';

describeConformance(honoFixture);
