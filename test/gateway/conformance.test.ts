import { gatewayFixture } from '../conformance/fixtures/gateway.js';
import { describeConformance } from '../conformance/suite.js';

// G1: the whole HTTP conformance suite, through the gateway to an upstream that knows nothing of keys.
describeConformance(gatewayFixture);
