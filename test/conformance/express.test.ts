import { express4Fixture, express5Fixture } from './fixtures/express.js';
import { describeConformance } from './suite.js';

describeConformance(express5Fixture);
describeConformance(express4Fixture);
