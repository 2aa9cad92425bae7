import { nodeFixture } from './fixtures/node.js';
import { describeConformance } from './suite.js';

describeConformance(nodeFixture);
