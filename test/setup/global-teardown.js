export default async function globalTeardown() {
  globalThis.__MRRT_REDIS__?.kill('SIGTERM');
}
