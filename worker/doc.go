// Package worker is foreman's single job runner. One loop takes one job at a time from the
// JetStream queue and runs it against the target Ollama:
//
//   - selection (plan, ADR-0027) serves classes first (high, normal, low; a job past
//     MaxWait goes first whatever its class), then drains by runner (a model with its load
//     options): a job of a runner already loaded on the target goes before an older job
//     that would make the target swap, bounded by MaxConsecutive jobs of one runner in a
//     row and MaxWait for the longest another is passed over (since the current streak
//     began, for a job queued before it); within a runner and class the programs take
//     turns;
//   - an idle worker with EarlyCall (the embedded server) calls the target as it sees a job
//     published, before the job is stored and leased; the run adopts that call once it
//     holds the lease, any other way out aborts it unseen (ADR-0034). No frame is
//     published before the job is stored, nor, but for a sync job's, before the attempt's
//     start is (ADR-0032, ADR-0036);
//   - every job moves queued → loading|working → done|failed|canceled in its KV record,
//     with retrying between attempts; the record write is the state event;
//   - the target's response frames are published byte-exact through a broker.StreamWriter
//     (the job's stream, ADR-0018), the first with the response Content-Type, and one
//     final marker before the terminal state (an async job retried after a dropped
//     connection streams again from Foreman-Seq 1);
//   - connection errors retry with a NAK delay and pause the worker until the target
//     answers, up to the store's MaxAttempts (also its queue's MaxDeliver, so the limit is
//     set once; an async job's call that never reached the target counts no attempt,
//     ADR-0089); HTTP errors are terminal, but for the target's "not now" (503, 429: the
//     worker waits, an async job's attempt not counted, ADR-0086), a proxy's word that
//     the target is not there (502, 504, ADR-0057) and a runner's death (ADR-0085), which
//     are retried;
//   - a target that stalls (no first byte within FirstByteTimeout, silence beyond
//     StreamIdleTimeout) or an attempt longer than MaxJobTime is a failed attempt, retried
//     like a connection error; a stall is reported by TargetStall for /healthz until a
//     later attempt gets an answer (ADR-0026); so is an attempt with no byte of answer
//     while the inventory's polls go unanswered for TargetSilence (ADR-0049);
//   - every record write goes through one transition helper, whose guard says which
//     records it may start from (not ended; no cancellation requested; still loading);
//   - the worker is the one writer of a running job's terminal state: Store.Cancel only
//     sets the record's cancel_requested, and the worker aborts the request, publishes the
//     final canceled marker and writes canceled (a job that finished first stays done; a
//     redelivered or handed-back job with a request ends canceled without running);
//   - Stop hands a running job back un-acked, so nothing is lost and nothing runs twice to
//     completion.
package worker
