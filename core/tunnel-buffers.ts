/**
 * How many bytes one tunnel may queue for an HTTP/2 connection it shares with other tunnels, before it
 * stops reading its other side. The gateway applies it to destination bytes waiting for the client, the
 * sidecar to agent bytes waiting for the gateway: in both, every tunnel's queue is the same connection's
 * memory, so the bound is per connection and each tunnel gets a share.
 *
 * 1 MiB for a lone tunnel: HTTP/2 streams have a 16 KiB high-water mark, and pausing a socket at every
 * 64 KiB read cost an epoll_ctl pair per read. 8 MiB per connection: with 1 MiB per tunnel alone, 100
 * tunnels on one connection could queue 100 MiB, and that off-heap memory set off V8 "external memory
 * pressure" full GCs every ~25 MiB moved (bench, --trace-gc). Never under 64 KiB, one socket read.
 */
const PER_TUNNEL_MAX = 1024 * 1024;
const PER_CONNECTION = 8 * 1024 * 1024;
const PER_TUNNEL_MIN = 64 * 1024;

export function perTunnelBufferLimit(tunnelsOnConnection: number): number {
  const share = PER_CONNECTION / Math.max(1, tunnelsOnConnection);
  return Math.max(PER_TUNNEL_MIN, Math.min(PER_TUNNEL_MAX, share));
}
