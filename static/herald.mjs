// ES module entry point: `import Herald from '/static/herald.mjs'`.
// The library itself lives in /herald.js, which also works as a classic script.
import '../herald.js';

const Herald = globalThis.Herald;
export const HeraldError = Herald.HeraldError;
export default Herald;
