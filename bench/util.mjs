// The runner's progress line (stderr: stdout carries nothing but the results) and a sleep.

export const log = (...parts) => process.stderr.write(`bench: ${parts.join(' ')}\n`);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
