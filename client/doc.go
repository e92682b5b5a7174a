// Package client is the Go client of foreman, a durable queue in front of one Ollama server.
//
// It covers every level foreman offers (ADR-0011):
//
//   - Ollama calls through the queue: Chat and Generate (streamed chunk by chunk to a
//     callback, or in one piece), Embed, Tags and Ps.
//
//   - Async jobs: SubmitAsync returns a job id at once; Job, Jobs, Cancel and Artifact read
//     and steer jobs; Watch follows a job's state changes. Queue shows the waiting jobs in
//     the order foreman will run them, and Job gives a waiting job's position and ETA.
//
//   - A synchronous facade over the async API: Submit queues a job and returns when it has
//     finished, however long the queue is.
//
// Submit waits by the best means available:
//
//  1. NATS (WithNATS or WithNATSURL): the job is submitted by request/reply on
//     foreman.jobs.submit (by POST /jobs when the request exceeds the connection's max
//     payload, or nobody answers on the subject), the client subscribes to
//     foreman.job.<id>.state and then reads the job once, so a state reached before the
//     subscription is never missed. A submit that gets no reply within 40 s fails with
//     an error matching nats.ErrTimeout, or, with an IdempotencyKey, is retried by
//     POST /jobs; one whose context's deadline comes first fails with an error matching
//     both nats.ErrTimeout and context.DeadlineExceeded (the job may have been queued).
//  2. Webhook: an ephemeral HTTP receiver on WithWebhookListenAddr (default
//     127.0.0.1:0, used when foreman runs on a loopback address) whose URL rides along
//     as the job's state_webhook_url, unless the job names its own (WebhookURL, or
//     state_webhook_url in Body): a job has one webhook. Signatures are verified when
//     WithWebhookSecret is set. The URL is WithWebhookURL's, or built from the listen address when foreman
//     can reach it (see WithWebhookListenAddr). If the receiver cannot bind, has no
//     address foreman is known to reach, or foreman's webhook network policy refuses its
//     URL (400; loopback is refused unless FOREMAN_WEBHOOK_ALLOW_NETS opens it), the
//     client falls back to polling; after such a refusal it offers no receiver again.
//     A delivery signed with the secret but stamped more than 5 minutes from this
//     machine's clock (the clocks differ) is not taken, but answered 410 (foreman sends
//     the job no more) and told to OnWaitError; the wait then polls every
//     WithPollInterval. When Submit returns before its job's terminal event came, the
//     receiver answers deliveries 410 for 10 s more, closing once it answered one (Close
//     releases it at once), so foreman stops retrying them (ADR-0119). On the LAN anyone
//     may connect to it: a request's
//     body must arrive within 10 s (one it does not read too), a kept-alive connection
//     sending nothing more is closed after 2 minutes, and a request's line and headers
//     are bounded to 64 KiB (431 beyond).
//  3. Polling: GET /jobs/{id} every WithPollInterval.
//
// NATS and webhook waits also poll slowly as a backstop, since core NATS and webhook
// deliveries can be lost. A terminal event is followed by a read of the final record
// (its result, and its result.json artifact when the result is too large to inline),
// and a loss of events (a NATS reconnect) by a read of the job; should such a read,
// or Submit's first read of its job, fail for now (a 5xx, a 429, foreman
// unreachable, an answer cut short), it is made again briskly (50 ms, doubling to
// 2 s, never slower than WithPollInterval), or after foreman's Retry-After when it asks
// for longer (up to 30 s).
// Every wait honours its context; WithCancelOnContextDone also cancels the job on
// the server when the context ends.
// WithAnswerTimeout bounds each request of a wait, not the wait: a foreman that takes a
// read of the job (or, while a Chat's answer is silent, a check of it) and answers
// nothing within the bound ends the wait with a *NoAnswerError; a job waiting in the
// queue, however long, does not. Only foreman's answer counts: a proxy's 5xx page in its
// place (foreman hung or gone behind the proxy) is asked again within the bound, then
// ends the wait the same way (NoAnswerError.Instead).
//
// A waiting job shows its place in the queue: Job fills QueuePosition and ETA, and Queue
// lists the whole queue. Chat and Generate answer only once their job runs; with
// WithOnQueued they hand over the job's id as soon as it is queued, so its place can be
// read while it waits.
//
// Errors are typed: an HTTP error answer is an *APIError with the status and foreman's
// message, which matches ErrNotFound (404), ErrUnauthorized (401), ErrQueueFull (a full
// queue's 503) and, for a Chat or Generate whose job was canceled, ErrJobCanceled with
// errors.Is; a job that ended failed or canceled is a *JobError that matches ErrJobFailed
// (and ErrJobCanceled) with errors.Is; a server that cannot be reached is a
// *ConnectionError that matches ErrUnreachable, and a request whose connection broke
// after foreman had it (before or during the answer) a *CutShortError that matches
// ErrCutShort; a request of a wait that foreman left unanswered for WithAnswerTimeout a
// *NoAnswerError that matches ErrNoAnswer and context.DeadlineExceeded; a success answer that is not foreman's (a captive portal's page, another
// server's JSON, for Chat and Generate a stream that does not begin with a chunk of
// Ollama's) is a *ForeignAnswerError that matches ErrNotForeman.
//
// Job and Cancel say foreman's time of their answer (Job.Now, from its Date), as Jobs
// does (JobList.Now): take a job's ages against it, not against this host's clock.
//
// The package depends on the standard library, nats.go and foreman's broker (subject
// names and the state event's JSON), ollama (Ollama's wire types) and
// gateway/webhook/signature packages; it never pulls nats-server into a build.
package client
