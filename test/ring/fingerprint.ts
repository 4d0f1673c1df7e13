/**
 * Child-process half of the cross-process determinism test: prints the
 * mapping fingerprint of FINGERPRINT_MEMBERS listed in reverse order.
 */
import { FINGERPRINT_MEMBERS, mappingFingerprint } from "./support.ts";

console.log(mappingFingerprint([...FINGERPRINT_MEMBERS].reverse()));
