import { fetchFixture } from './fixtures/fetch.js';
import { describeConformance } from './suite.js';

describeConformance(fetchFixture);
