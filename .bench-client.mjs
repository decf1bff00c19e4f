import http2 from 'node:http2'; import fs from 'node:fs';
const [gwPort, sinkPort, certPath, keyPath] = process.argv.slice(2);
const MB = 256;
const s = http2.connect(`https://localhost:${gwPort}`, { rejectUnauthorized: false, cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath), settings: { initialWindowSize: 4 << 20 } });
await new Promise(r => s.once('connect', r)); s.setLocalWindowSize(32 << 20);
const open = () => new Promise((res) => { const st = s.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${sinkPort}` }); st.once('response', () => res(st)); });
// upload
let st = await open(); const block = Buffer.alloc(64 * 1024, 1); const total = MB * 1024 * 1024;
let t0 = process.hrtime.bigint(); st.write(Buffer.from('U'));
await new Promise((res) => { let sent = 0; const pump = () => { while (sent < total) { sent += block.length; if (!st.write(block)) return st.once('drain', pump); } st.end(); }; pump(); st.on('data', () => {}); st.on('end', res); });
let dt = Number(process.hrtime.bigint() - t0) / 1e9; console.log(`upload ${(MB / dt).toFixed(0)} MB/s`);
st = await open(); const hdr = Buffer.alloc(5); hdr[0] = 0x44; hdr.writeUInt32LE(MB, 1);
t0 = process.hrtime.bigint(); st.write(hdr); st.end();
await new Promise((res) => { st.on('data', () => {}); st.on('end', res); });
dt = Number(process.hrtime.bigint() - t0) / 1e9; console.log(`download ${(MB / dt).toFixed(0)} MB/s`);
s.close();
