import { nestjsExpressFixture } from './fixtures/nestjs-express.js';
import { nestjsFastifyFixture } from './fixtures/nestjs-fastify.js';
import { describeConformance } from './suite.js';

describeConformance(nestjsExpressFixture);
describeConformance(nestjsFastifyFixture);
