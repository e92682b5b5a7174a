// Package worker is foreman's single job runner. One loop takes one job at a time from the
// JetStream queue and runs it against the target Ollama:
//
//   - selection drains by model: a job of the model already loaded on the target goes
//     before an older job that would make the target swap, bounded by MaxConsecutive jobs
//     of one model in a row and MaxWait for the longest wait of another model (plan);
//   - every job moves queued → loading|working → done|failed|canceled in its KV record,
//     with retrying between attempts; the record write is the state event;
//   - the target's response frames are published byte-exact through a broker.StreamWriter
//     (the job's stream, ADR-0018), the first with the response Content-Type, and one
//     final marker before the terminal state (an async job retried after a dropped
//     connection streams again from Foreman-Seq 1);
//   - connection errors retry with a NAK delay and pause the worker until the target
//     answers; HTTP errors are terminal;
//   - a target that stalls (no first byte within FirstByteTimeout, silence beyond
//     StreamIdleTimeout) or an attempt longer than MaxJobTime is a failed attempt, retried
//     like a connection error; a stall is reported by TargetStall for /healthz until a
//     later attempt gets an answer (ADR-0026);
//   - the worker is the one writer of a running job's terminal state: Store.Cancel only
//     sets the record's cancel_requested, and the worker aborts the request, publishes the
//     final canceled marker and writes canceled (a job that finished first stays done; a
//     redelivered or handed-back job with a request ends canceled without running);
//   - Stop hands a running job back un-acked, so nothing is lost and nothing runs twice to
//     completion.
package worker
