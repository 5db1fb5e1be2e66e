// A zero-hop client in another gRPC implementation: grpc-js with grpc-js-xds, calling GetModelInfo on
// xds:///NAME as the router's control plane decides. The same output as tests/xdsprobe.py, so the same
// test code reads both: a first line {"ready": true} once a call has been answered, then one JSON line
// per window: {"t", "primary", "standby", "workers": {WORKER: n}, "errors": {CODE: n}}.
//
//   GRPC_XDS_BOOTSTRAP=bootstrap.json node xdsprobe.js --protos DIR --calls 4 --duration 8 --window 0.05
//
// The bootstrap is the one `eagleeye bootstrap` prints, unchanged: that grpc-js starts with it is part
// of what the test checks.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const grpcXds = require("@grpc/grpc-js-xds");
const protoLoader = require("@grpc/proto-loader");

function parse(argv) {
  const args = { name: "eagleeye-detector", calls: 4, duration: 20, window: 0.1, deadline: 2, protos: null };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in args) || i + 1 >= argv.length) {
      process.stderr.write(`xdsprobe.js: unknown or incomplete option ${argv[i]}\n`);
      process.exit(2);
    }
    args[key] = key === "name" || key === "protos" ? argv[i + 1] : Number(argv[i + 1]);
  }
  if (!args.protos) {
    process.stderr.write("xdsprobe.js: --protos DIR (the repository's protos/) is required\n");
    process.exit(2);
  }
  return args;
}

function main() {
  const args = parse(process.argv.slice(2));
  grpcXds.register();
  const definition = protoLoader.loadSync(path.join("eagleeye", "detector", "v1", "detector.proto"),
    { includeDirs: [args.protos], keepCase: true });
  const Detector = grpc.loadPackageDefinition(definition).eagleeye.detector.v1.Detector;
  const client = new Detector(`xds:///${args.name}`, grpc.credentials.createInsecure(),
    { "grpc.initial_reconnect_backoff_ms": 100 });

  const started = Date.now();
  const end = started + args.duration * 1000;
  let tally = new Map();
  let answered = false;
  const count = (key) => tally.set(key, (tally.get(key) || 0) + 1);

  const loop = () => {
    if (Date.now() >= end) return;
    client.GetModelInfo({}, { deadline: new Date(Date.now() + args.deadline * 1000) }, (err, reply) => {
      if (err) {
        count(`error:${(grpc.status[err.code] || String(err.code))}`);
      } else {
        answered = true;
        count(reply.worker);
      }
      setImmediate(loop);
    });
  };
  for (let i = 0; i < args.calls; i++) loop();

  let readySaid = false;
  let nextAt = started + args.window * 1000;
  const report = () => {
    const window = tally;
    tally = new Map();
    if (!readySaid && answered) {
      process.stdout.write(JSON.stringify({ ready: true }) + "\n");
      readySaid = true;
    }
    const errors = {};
    const workers = {};
    for (const [key, n] of window) {
      if (key.startsWith("error:")) errors[key.slice(6)] = n;
      else workers[key] = n;
    }
    process.stdout.write(JSON.stringify({ t: (Date.now() - started) / 1000, primary: workers.primary || 0,
      standby: workers.standby || 0, errors, workers }) + "\n");
    if (Date.now() >= end) {
      // Calls still in flight end within their deadline; then the channel closes and node exits.
      setTimeout(() => { client.close(); process.exit(0); }, args.deadline * 1000 + 100).unref();
      return;
    }
    nextAt += args.window * 1000;
    setTimeout(report, Math.max(0, nextAt - Date.now()));
  };
  setTimeout(report, args.window * 1000);
}

main();
