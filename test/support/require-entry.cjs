// Loaded by commonjs.test.ts in a child process: the package by its own name, through require().
const mrrt = require('oidc-provider-mrrt');
const admin = require('oidc-provider-mrrt/express');
const Provider = require('oidc-provider');

const MrrtProvider = mrrt.withMrrt(Provider.default ?? Provider, { store: new mrrt.MemoryPolicyStore() });
const provider = new MrrtProvider('https://op.example.com', { scopes: ['openid', 'offline_access'] });
process.stdout.write(
  JSON.stringify({
    exports: Object.keys(mrrt).sort(),
    express: Object.keys(admin).sort(),
    isProvider: provider instanceof (Provider.default ?? Provider),
  }),
);
