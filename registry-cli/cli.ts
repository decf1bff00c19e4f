#!/usr/bin/env node
// Entry point of the registry CLI (registry-cli/*.sh exec this). The work is in program.ts and commands/.
import { processIo } from './io.js';
import { runCli } from './program.js';

process.exitCode = await runCli(process.argv, process.env, processIo);
