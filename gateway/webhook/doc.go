// Package webhook delivers job state events to the webhook URL each async job names.
//
// The Dispatcher is a durable JetStream consumer ("webhooks") on the job bucket's stream
// KV_FOREMAN_JOBS: every write of a job record is an event, so there is no second events
// stream and no dual write (ADR-0016). Each event to deliver is stored as a pending
// delivery (whq.<id>.<rev> in the bucket) before its message is acked, and retried from
// there by the dispatcher's own timers until a 2xx, a 410, a policy refusal or the last
// attempt: deliveries are at-least-once and survive a restart, and no receiver's retries
// hold messages the others' events wait behind (ADR-0022).
//
// A Policy decides which addresses webhooks may reach; every connection is checked
// (ADR-0021).
//
// Requests follow Standard Webhooks 1.0: headers webhook-id (stable across retries and
// restarts: "<job id>-<record revision>"), webhook-timestamp and, with a secret,
// webhook-signature, plus X-Foreman-Signature (the same MAC of "<id>.<timestamp>.<body>"
// in hex); the body is the state event exactly as published on foreman.job.<id>.state.
// Receivers verify with Verify or any Standard Webhooks library. The signing itself lives
// in package signature, which the public client's VerifyWebhook shares.
//
// A failing receiver never blocks or changes its job (ADR-0005), nor other jobs'
// deliveries: jobs are delivered concurrently, the events of one job in order; an event
// older than one of its job already sent or tried (offered again after a restart) is not
// sent but recorded as superseded (ADR-0055). Sync jobs (a caller already waits on
// /api/chat) fire no webhooks (ADR-0014).
package webhook
