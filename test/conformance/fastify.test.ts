import { fastifyFixture } from './fixtures/fastify.js';
import { describeConformance } from './suite.js';

describeConformance(fastifyFixture);
