/**
 * An error as one line of text, the same in every program (gateway, sidecar, registry CLI, dev-support),
 * so the same failure reads the same in every log.
 *
 * - An AggregateError with no message of its own (a connect that failed on both ::1 and 127.0.0.1) is
 *   its errors' texts joined with "; ".
 * - A Node or PostgreSQL error code the message does not already name is put in front: `EACCES: ...`.
 * - A `cause` whose text (or message) the message does not already contain follows in parentheses, so
 *   wrapping an error (`new X(errorText(err), { cause: err })` or `err.message`) never repeats it.
 * - An empty message falls back to the error's name; anything that is not an Error is String(value).
 */
export function errorText(err: unknown): string {
  return textOf(err, 0);
}

// Causes and aggregated errors can loop (a.cause = b, b.cause = a); past a few levels text adds nothing.
const MAX_DEPTH = 4;

function textOf(err: unknown, depth: number): string {
  if (!(err instanceof Error)) return String(err);
  if (depth > MAX_DEPTH) return err.message || err.name;
  let text =
    err.message === '' && err instanceof AggregateError
      ? err.errors.map((e) => textOf(e, depth + 1)).join('; ') || err.name
      : err.message || err.name;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && code !== '' && !text.includes(code)) text = `${code}: ${text}`;
  if (err.cause !== undefined) {
    const cause = textOf(err.cause, depth + 1);
    const causeMessage = err.cause instanceof Error ? err.cause.message : cause;
    if (!text.includes(cause) && !(causeMessage !== '' && text.includes(causeMessage))) {
      text = `${text} (${cause})`;
    }
  }
  return text;
}
