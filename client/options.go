package client

import (
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
)

// Option configures a Client; pass options to New. A nil Option is skipped.
type Option func(*Client)

// WithToken sends token as the bearer token foreman requires when FOREMAN_AUTH_TOKEN is set.
// New fails for a token with a control character (such as the newline a file read
// keeps), which no HTTP header can carry.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient replaces the HTTP client (default: a client without a timeout, since a
// streamed chat may last many minutes; bound calls with their context instead). A nil hc
// keeps the default.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithWebhookSecret verifies the signatures of webhooks Submit receives: secret is
// foreman's FOREMAN_WEBHOOK_SECRET ("whsec_<base64>" or raw). Without it the receiver
// accepts unsigned deliveries and re-reads the job before trusting a terminal state.
func WithWebhookSecret(secret string) Option { return func(c *Client) { c.webhookSecret = secret } }

// WithPollInterval sets how often a job is polled while waiting without NATS or webhooks
// (default 1s). NATS and webhook waits poll at 15 times the interval as a backstop.
func WithPollInterval(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.pollInterval = d
		}
	}
}

// WithOnQueued makes Chat and Generate call fn with the job's id as soon as foreman has
// queued the job, before it runs (foreman sends it in a 103 Early Hints response when the
// client asks, which it does only with this option). With the id, Job shows the job's
// place in the queue (QueuePosition, ETA) while it waits. fn runs on the HTTP transport's
// goroutine: it should return quickly.
func WithOnQueued(fn func(jobID string)) Option { return func(c *Client) { c.onQueued = fn } }

// WithAnswerTimeout bounds each request a wait makes, never the wait: a job may wait in
// the queue as long as it takes, but a foreman that takes a request and answers nothing
// (its process stopped, its job store hung) would hold the wait for ever. With d > 0
// (default 0: no bound):
//
//   - Submit's submit (unless SubmitRequest.SubmitTimeout bounds it), every read of the
//     job by Submit, Wait and Watch (the first, each poll, the read of the final record
//     and of its result.json) and each poll of Watch("") must be answered within d;
//   - while the answer of Chat or Generate stays silent for d (its job waits in the
//     queue, or its model loads), the client checks that foreman still answers: it reads
//     the job (GET /jobs/{id}: its id comes early with WithOnQueued, which asks foreman
//     for a 103, else with the answer's headers), or, before the id came, GET /healthz
//     (a foreman whose job store hangs may still answer it). Any answer of foreman's,
//     whatever its status, lets the stream wait on;
//     so does a check whose connection was not made within d (it never reached foreman).
//
// Only foreman's answer counts: a 5xx that is not its {"error": "..."} JSON (the page
// of a proxy in front of foreman that cannot reach it, or had no answer from it in
// time: nginx's 502 or 504, Caddy's 502, Envoy's 503) is asked again, briskly, within d,
// and a request that got nothing else within d is unanswered (NoAnswerError.Instead holds
// the page). Submit's submit and the call of Chat or Generate, each a POST that may have
// made its job, are not asked again: such a page ends the call at once, an *APIError
// with Raw set. A degraded foreman's answers (its 503 while its job store refuses, a
// /healthz saying "degraded") are foreman's.
//
// A request not sent within d (its connection not made) never reached foreman: it is a
// *ConnectionError, which a wait rides out as it does a refused connection.
//
// A request with no answer within d ends the call with a *NoAnswerError, which matches
// ErrNoAnswer and context.DeadlineExceeded: a silent stream's within 3d at most. Watch's
// channel closes then.
func WithAnswerTimeout(d time.Duration) Option {
	return func(c *Client) { c.answerTimeout = max(d, 0) }
}

// WithPollingOnly makes Submit and Watch poll even when NATS or a webhook receiver could
// be used.
func WithPollingOnly() Option { return func(c *Client) { c.pollingOnly = true } }

// WithNATS uses an existing connection to foreman's NATS (a client user on
// FOREMAN_NATS_LISTEN) to submit jobs and follow their state. The caller keeps owning nc.
func WithNATS(nc *nats.Conn) Option { return func(c *Client) { c.nc = nc } }

// WithNATSURL connects to foreman's NATS at url when New runs (e.g.
// "nats://user:password@host:4222", or pass nats.UserInfo in natsOpts). Close closes the
// connection. New fails if the connection cannot be made.
func WithNATSURL(url string, natsOpts ...nats.Option) Option {
	return func(c *Client) { c.natsURL, c.natsOpts = url, natsOpts }
}

// WithCancelOnContextDone makes Submit and Wait cancel the job on the server (DELETE
// /jobs/{id}) when their context ends before the job does; by default the job keeps
// running and can be picked up later with Wait or Job.
func WithCancelOnContextDone() Option { return func(c *Client) { c.cancelOnDone = true } }

// WithWebhookListenAddr sets the host:port of Submit's ephemeral webhook receiver
// (default "127.0.0.1:0", a random loopback port, used only when foreman's URL is a
// loopback address). Setting it enables webhook waits for any foreman URL. The URL
// foreman is given is WithWebhookURL's when set; otherwise it is built from this address:
//
//   - a specific host (a name or IP, e.g. "myhost.lan:9000") is advertised as given, with
//     the port actually bound;
//   - an unspecified host (":9000", "0.0.0.0:9000", "[::]:9000") is advertised as a
//     loopback address when foreman's URL is loopback;
//   - a loopback or unspecified host while foreman's URL is not loopback has no address
//     foreman is known to reach: Submit then registers no webhook and waits by polling
//     (or NATS) rather than for deliveries that could never arrive.
//
// If the address cannot be bound, Submit polls instead.
func WithWebhookListenAddr(addr string) Option {
	return func(c *Client) { c.webhookAddr, c.webhookAddrSet = addr, true }
}

// WithWebhookURL sets the public base URL foreman calls Submit's webhook receiver at,
// e.g. "http://myhost.example:9000" or, behind a proxy or tunnel,
// "https://hooks.example.com/foreman"; the receiver appends "/foreman-webhook/<token>"
// and accepts the request with or without publicBase's path prefix. It requires
// WithWebhookListenAddr (the address the requests must arrive on, with a fixed port);
// New fails without it or when publicBase is not an absolute http(s) URL.
func WithWebhookURL(publicBase string) Option {
	return func(c *Client) { c.webhookURL = publicBase }
}
