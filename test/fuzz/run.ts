/**
 * `npm run fuzz`: every parser property with its target's full input count (FULL_RUNS per target, shared
 * by its properties), outside CI. Prints the seed and counts for every chunk of inputs, and for a
 * failure fast-check's report: seed, path and the shrunk counterexample. Exit status 1 on any failure.
 *
 *   npm run fuzz                      all targets
 *   npm run fuzz -- config            targets whose name contains "config"
 *   FUZZ_SEED=123 FUZZ_RUNS=5000 npm run fuzz -- destination    replay / shorter run
 */
import * as fc from 'fast-check';
import { removeConfigScratch } from './config.fuzz.js';
import { runsPerProperty } from './fuzz-target.js';
import { TARGETS } from './targets.js';

/** Inputs per fc.check call: a seed and a progress line per chunk, so a long run shows where it is. */
const CHUNK = 50_000;

function positiveInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`${name}=${JSON.stringify(v)} is not a positive integer`);
    process.exit(2);
  }
  return n;
}

function main(): number {
  const filters = process.argv.slice(2).map((a) => a.toLowerCase());
  const targets = TARGETS.filter(
    (t) => filters.length === 0 || filters.some((f) => t.name.toLowerCase().includes(f)),
  );
  if (targets.length === 0) {
    console.error(
      `no target matches ${filters.join(', ')}; targets: ${TARGETS.map((t) => t.name).join('; ')}`,
    );
    return 2;
  }
  const runsOverride = positiveInt('FUZZ_RUNS');
  let seed = positiveInt('FUZZ_SEED') ?? (Date.now() ^ (Math.random() * 0x7fffffff)) >>> 0;
  const started = Date.now();
  let failures = 0;
  console.log(`fuzz: ${targets.length} target(s), first seed ${seed}, ${new Date(started).toISOString()}`);
  for (const target of targets) {
    const total = runsOverride ?? target.fullRuns;
    const perProperty = runsPerProperty(target, total);
    const targetStart = Date.now();
    let targetRuns = 0;
    console.log(`\n== ${target.name}: ${total} inputs, ${perProperty} per property`);
    for (const { name, property } of target.properties) {
      const propStart = Date.now();
      let done = 0;
      let skipped = 0;
      let failed = false;
      while (done < perProperty && !failed) {
        const numRuns = Math.min(CHUNK, perProperty - done);
        const details = fc.check(property, { numRuns, seed });
        done += details.numRuns;
        skipped += details.numSkips;
        if (details.failed) {
          failed = true;
          failures++;
          console.log(`   FAIL ${name} (seed ${seed}, after ${done} inputs)`);
          console.log(fc.defaultReportMessage(details) ?? '(no report)');
        } else {
          console.log(`   .. ${name}: ${done}/${perProperty} (chunk seed ${seed})`);
        }
        seed = (seed + 1) >>> 0;
      }
      targetRuns += done;
      const secs = ((Date.now() - propStart) / 1000).toFixed(1);
      console.log(`   ${failed ? 'FAILED' : 'ok'} ${name}: ${done} inputs, ${skipped} skipped, ${secs} s`);
    }
    const secs = ((Date.now() - targetStart) / 1000).toFixed(1);
    console.log(`== ${target.name}: ${targetRuns} inputs in ${secs} s`);
  }
  removeConfigScratch();
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log(
    `\nfuzz: ${failures === 0 ? 'all properties held' : `${failures} propert${failures === 1 ? 'y' : 'ies'} FAILED`}, ${secs} s`,
  );
  return failures === 0 ? 0 : 1;
}

process.exitCode = main();
