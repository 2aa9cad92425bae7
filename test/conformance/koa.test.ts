import { koa2Fixture, koa3Fixture } from './fixtures/koa.js';
import { describeConformance } from './suite.js';

describeConformance(koa2Fixture);
describeConformance(koa3Fixture);
