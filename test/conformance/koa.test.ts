import { koaFixture } from './fixtures/koa.js';
import { describeConformance } from './suite.js';

describeConformance(koaFixture);
