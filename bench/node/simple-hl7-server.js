// simple-hl7's MLLP server answering every message with its default ACK (AA), for
// scripts/bench-mllp. Usage: node simple-hl7-server.js PORT
const hl7 = require('simple-hl7');
const port = Number(process.argv[2] || 2575);
const app = hl7.tcp();
app.use((req, res, next) => res.end());
app.use((err, req, res, next) => { res.ack.msh ? res.end() : next(err); });
app.start(port);
console.log(`READY ${port}`);
