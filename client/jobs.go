package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// SubmitRequest is one async job. Set exactly one of Chat, Generate, Embed or Body.
type SubmitRequest struct {
	Chat     *ChatRequest
	Generate *GenerateRequest
	Embed    *EmbedRequest
	// Body is a raw POST /jobs body: the request of any kind's route (/api/chat,
	// /api/generate, /api/embed, /v1/chat/completions, /v1/completions, /v1/responses,
	// /v1/messages), with "kind" when it is not a chat (as `foreman submit --file` sends
	// it).
	Body json.RawMessage

	// WebhookURL receives the job's state events (state_webhook_url; it takes the place
	// of one in Body). Submit then waits by NATS or polling instead of its own receiver,
	// since a job has one webhook; so it does for a Body that names its own.
	WebhookURL string
	// WebhookEvents filters the events sent to WebhookURL, e.g. done and failed; empty
	// means all.
	WebhookEvents []State
	// IdempotencyKey makes a retried submit return the first submit's job. It also lets
	// a NATS submit that got no reply in time be retried by POST /jobs.
	IdempotencyKey string
	// Priority is the job's class, "high", "normal" or "low" ("priority"); empty leaves
	// foreman's default (normal unless configured otherwise).
	Priority string
	// Program names the submitting program ("program"), 1 to 64 of [A-Za-z0-9._-]. A
	// foreman with named tokens ignores it: the token's name is the program.
	Program string
	// OnState, if set, is called by Submit with every state change it observes, in order
	// (the first is usually queued). It runs on Submit's goroutine; keep it short.
	OnState func(Event)
	// OnWaitError, if set, is called by Submit with each read of the job that failed
	// while it waits, when the wait goes on anyway (foreman restarting or unreachable: it
	// reads again at the next poll). It is also told, once, when Submit's webhook
	// receiver gets a delivery signed with the WithWebhookSecret secret but stamped more
	// than 5 minutes from this machine's clock (errors.Is ErrWebhookTimestamp): the
	// clocks differ, the receiver takes none of foreman's deliveries, and Submit polls the
	// job every poll interval instead. Same goroutine as OnState.
	OnWaitError func(error)
	// SubmitTimeout, when positive, bounds Submit's submit of the job (not its wait for
	// the job), as a context deadline would bound SubmitAsync: past it Submit returns
	// context.DeadlineExceeded, and the job may have been queued all the same (an
	// IdempotencyKey makes the retry safe). With WithCancelOnContextDone the submit is
	// bounded by 45s too.
	SubmitTimeout time.Duration
}

// hasWebhook reports whether the job names its webhook: WebhookURL, or a
// state_webhook_url in Body. A job has one webhook, so Submit then starts no receiver,
// which would take its place.
func (r *SubmitRequest) hasWebhook() bool {
	if r.WebhookURL != "" {
		return true
	}
	if len(r.Body) == 0 {
		return false
	}
	var b struct {
		URL string `json:"state_webhook_url"`
	}
	// A body that does not decode is refused by body() or by foreman.
	return json.Unmarshal(r.Body, &b) == nil && b.URL != ""
}

// body is the POST /jobs JSON: the request plus kind and webhook fields.
func (r *SubmitRequest) body() ([]byte, error) {
	var (
		req  any
		kind Kind
		n    int
	)
	if r.Chat != nil {
		req, kind, n = r.Chat, KindChat, n+1
	}
	if r.Generate != nil {
		req, kind, n = r.Generate, KindGenerate, n+1
	}
	if r.Embed != nil {
		req, kind, n = r.Embed, KindEmbed, n+1
	}
	if len(r.Body) > 0 {
		req, n = r.Body, n+1
	}
	if n != 1 {
		return nil, errors.New("client: a SubmitRequest needs exactly one of Chat, Generate, Embed or Body")
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("client: encode request: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, errors.New("client: the job body must be a JSON object")
	}
	set := func(k string, v any) {
		b, _ := json.Marshal(v)
		obj[k] = b
	}
	if kind != "" {
		set("kind", kind)
	}
	if r.WebhookURL != "" {
		set("state_webhook_url", r.WebhookURL)
	}
	if len(r.WebhookEvents) > 0 {
		set("webhook_events", r.WebhookEvents)
	}
	if r.Priority != "" {
		set("priority", r.Priority)
	}
	if r.Program != "" {
		set("program", r.Program)
	}
	return json.Marshal(obj)
}

// SubmitAsync queues a job and returns its id at once (POST /jobs, or request/reply on
// foreman.jobs.submit when the client has NATS). Follow it with Wait, Watch or Job.
func (c *Client) SubmitAsync(ctx context.Context, req SubmitRequest) (string, error) {
	body, err := req.body()
	if err != nil {
		return "", err
	}
	id, _, err := c.submit(ctx, body, req.IdempotencyKey)
	return id, err
}

// natsSubmitTimeout bounds the wait for foreman's reply to a NATS submit when the context
// allows longer: a little more than foreman's own 30 s bound on answering one, so a slow
// but live foreman still answers, while a foreman that died holding the request does not
// stall the caller forever.
const natsSubmitTimeout = 40 * time.Second

// natsHeaderRoom is more than the NATS header of a submit ("NATS/1.0", the
// Idempotency-Key line without the key, CRLFs) adds to the body.
const natsHeaderRoom = 64

// submit submits body and returns the job's id; replayed says, over HTTP, that an
// Idempotency-Key returned the job an earlier submit made (Idempotent-Replayed).
func (c *Client) submit(ctx context.Context, body []byte, idemKey string) (id string, replayed bool, err error) {
	if c.natsFits(body, idemKey) {
		id, err := c.submitNATS(ctx, body, idemKey)
		switch {
		case err == nil:
			return id, false, nil
		case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrMaxPayload):
			// Nobody answers on the submit subject (an older foreman, or another NATS
			// deployment), or the server refused the size before anything was sent:
			// HTTP always works.
		case errors.Is(err, errNoSubmitReply) && idemKey != "":
			// foreman may have taken the job, but the key makes a second submit
			// return that same job.
		default:
			return "", false, err
		}
	}
	hdr := http.Header{}
	if idemKey != "" {
		hdr.Set("Idempotency-Key", idemKey)
	}
	resp, err := c.request(ctx, http.MethodPost, "/jobs", body, hdr)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	data, err := c.readAnswer(ctx, resp.Body, http.MethodPost, "/jobs", maxSmallAnswer)
	if err != nil {
		return "", false, err
	}
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		return "", false, c.foreignAnswer(resp, data, http.MethodPost, "/jobs")
	}
	id, err = decodeSubmitReply(data)
	return id, resp.Header.Get("Idempotent-Replayed") == "true", err
}

// natsFits reports whether a submit goes by NATS: the client has it and the request fits
// in one NATS message (the connection's max payload, 1 MiB by default, against the 32 MiB
// POST /jobs takes).
func (c *Client) natsFits(body []byte, idemKey string) bool {
	if !c.natsUp() || c.pollingOnly {
		return false
	}
	return int64(len(body)+len(idemKey)+natsHeaderRoom) <= c.nc.MaxPayload()
}

// natsUp reports whether the client has a NATS connection that may still carry
// messages: one closed for good (its reconnects spent) does not, and HTTP serves.
func (c *Client) natsUp() bool { return c.nc != nil && !c.nc.IsClosed() }

// errNoSubmitReply is a NATS submit that got no reply in time.
var errNoSubmitReply = errors.New("no reply from foreman")

func (c *Client) submitNATS(ctx context.Context, body []byte, idemKey string) (string, error) {
	msg := nats.NewMsg(broker.SubmitSubject)
	msg.Data = body
	if idemKey != "" {
		msg.Header.Set("Idempotency-Key", idemKey)
	}
	limit := c.natsSubmitTimeout
	if limit <= 0 {
		limit = natsSubmitTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	reply, err := c.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			// As the client's own bound below: the request may have reached foreman, which
			// may have queued the job. Matches both, so a caller told by either sees it.
			return "", fmt.Errorf("client: submit over NATS: no reply before the context's deadline (the job may have been queued; "+
				"set SubmitRequest.IdempotencyKey to retry safely): %w: %w", ctx.Err(), nats.ErrTimeout)
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if rctx.Err() != nil {
			// Wrapping nats.ErrTimeout lets callers match it with errors.Is.
			return "", fmt.Errorf("client: submit over NATS: %w after %v (the job may have been queued; "+
				"set SubmitRequest.IdempotencyKey to retry safely): %w", errNoSubmitReply, limit, nats.ErrTimeout)
		}
		return "", fmt.Errorf("client: submit over NATS: %w", err)
	}
	var r struct {
		JobID      string `json:"job_id"`
		Error      string `json:"error"`
		Status     int    `json:"status"`
		RetryAfter int64  `json:"retry_after"`
	}
	if err := json.Unmarshal(reply.Data, &r); err != nil {
		return "", fmt.Errorf("client: decode submit reply: %w", err)
	}
	if r.Error != "" || r.JobID == "" {
		status := r.Status
		if status == 0 {
			status, _ = strconv.Atoi(reply.Header.Get("Status"))
		}
		if status == 0 {
			status = http.StatusBadRequest
		}
		e := &APIError{Status: status, Message: r.Error}
		if r.RetryAfter > 0 {
			e.RetryAfter = time.Duration(min(r.RetryAfter, maxRetryAfter)) * time.Second
		}
		return "", e
	}
	return r.JobID, nil
}

func decodeSubmitReply(data []byte) (string, error) {
	var out struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(data, &out); err != nil || out.JobID == "" {
		return "", fmt.Errorf("client: submit: reply without a job_id (%v)", err)
	}
	return out.JobID, nil
}

// jobPath is the path of job id, and, with more, of a name under it (such as
// "artifacts", name); "", "." and ".." are no job id or name: as a path segment they
// would ask for another path (the list, foreman's root), whose answer is no job's.
func jobPath(id string, more ...string) (string, error) {
	path := "/jobs/" + url.PathEscape(id)
	for _, seg := range append([]string{id}, more...) {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("client: %q is no job id or artifact name", seg)
		}
	}
	for _, seg := range more {
		path += "/" + url.PathEscape(seg)
	}
	return path, nil
}

// Job reads a job's record (GET /jobs/{id}).
func (c *Client) Job(ctx context.Context, id string) (*Job, error) {
	return c.jobCall(ctx, http.MethodGet, id)
}

// jobCall sends method to job id's path and returns the record answered, which must be
// that job's: another job's (a cache or proxy gone wrong, a server posing as foreman)
// would have a wait return that job's result as this one's.
func (c *Client) jobCall(ctx context.Context, method, id string) (*Job, error) {
	path, err := jobPath(id)
	if err != nil {
		return nil, err
	}
	resp, err := c.request(ctx, method, path, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := c.readAnswer(ctx, resp.Body, method, path, maxJobAnswer)
	if err != nil {
		return nil, err
	}
	var j Job
	if err := c.decodeObject(resp, data, &j, method, path); err != nil {
		return nil, err
	}
	if err := j.check(method, path); err != nil {
		return nil, err
	}
	if j.ID != id {
		return nil, fmt.Errorf("client: %s %s: the answer is the record of another job, %q", method, path, j.ID)
	}
	j.normalize()
	j.Now = answeredAt(resp.Header, &j)
	return &j, nil
}

// answeredAt is foreman's time when it answered with job j's record: the answer's Date
// (net/http's, on the clock that stamps the records, Store.Now), zero without one. Date
// is cut to the second, and the answer came after its record was written: a stamp of
// j's within Date's second raises it to that stamp, so no age taken against it is
// negative. A stamp past that second is another foreman's clock (several Macs), not
// this answer's time.
func answeredAt(h http.Header, j *Job) time.Time {
	date, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		return time.Time{}
	}
	now := date.UTC()
	for _, st := range []*time.Time{&j.CreatedAt, j.StartedAt, j.FinishedAt} {
		if st != nil && st.After(now) && st.Before(date.Add(time.Second)) {
			now = st.UTC()
		}
	}
	return now
}

// Jobs lists jobs, newest first (GET /jobs).
func (c *Client) Jobs(ctx context.Context, f JobFilter) (*JobList, error) {
	q := url.Values{}
	states := f.States
	if f.State != "" {
		states = append([]State{f.State}, states...)
	}
	if len(states) > 0 {
		names := make([]string, len(states))
		for i, st := range states {
			names[i] = string(st)
		}
		q.Set("state", strings.Join(names, ","))
	}
	if f.Model != "" {
		q.Set("model", f.Model)
	}
	if f.Program != "" {
		q.Set("program", f.Program)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Cursor != "" {
		q.Set("cursor", f.Cursor)
	}
	path := "/jobs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	// A page holds at most the jobs asked for (foreman's default page is 50).
	page := min(f.Limit, maxJobsPage)
	if page <= 0 {
		page = 50
	}
	var out JobList
	if err := c.doJSON(ctx, http.MethodGet, path, nil, &out, maxListBase+page*maxListEntry); err != nil {
		return nil, err
	}
	for i := range out.Jobs {
		if err := out.Jobs[i].check(http.MethodGet, path); err != nil {
			return nil, err
		}
		out.Jobs[i].normalize()
	}
	return &out, nil
}

// Cancel cancels a job (DELETE /jobs/{id}) and returns it as foreman answered: canceled,
// or, for a running job that did not stop within a few seconds, still running with
// CancelRequested set (it ends canceled soon after). A job that already ended is an
// *APIError 409.
func (c *Client) Cancel(ctx context.Context, id string) (*Job, error) {
	return c.jobCall(ctx, http.MethodDelete, id)
}

// Artifact returns the bytes of a job's artifact (GET /jobs/{id}/artifacts/{name}).
func (c *Client) Artifact(ctx context.Context, id, name string) ([]byte, error) {
	return c.artifact(ctx, id, name, "")
}

// artifact is Artifact read as program (none when ""): foreman gives each program its
// share of the artifact bodies it sends at once (ADR-0126), and a read without a named
// token is the program its X-Foreman-Program header names, else the anonymous one.
func (c *Client) artifact(ctx context.Context, id, name, program string) ([]byte, error) {
	path, err := jobPath(id, "artifacts", name)
	if err != nil {
		return nil, err
	}
	var hdr http.Header
	if program != "" {
		hdr = http.Header{headerProgram: {program}}
	}
	resp, err := c.request(ctx, http.MethodGet, path, nil, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxTargetAnswer+1))
	if err != nil {
		return nil, c.cutShort(ctx, err)
	}
	if len(data) > maxTargetAnswer {
		return nil, tooLarge(http.MethodGet, path, maxTargetAnswer)
	}
	return data, nil
}

// awaitArtifact reads an artifact of a finished job as Artifact does until ctx ends: the
// job is done, and its caller asked for its result. A read that fails for now is told to
// onErr (optional) and made again: the 503 foreman sends while it sends as many artifact
// bodies as it sends at once (ADR-0065) after its Retry-After, any other (foreman
// unreachable while it restarts, an answer cut short by its store's read failing in the
// middle of the body, a proxy's 502) briskly, as the wait's reads are. The reads are
// the job's program's (artifact), so that they take its share of the places, not the
// anonymous program's.
func (c *Client) awaitArtifact(ctx context.Context, id, name, program string, onErr func(error)) ([]byte, error) {
	brisk := min(briskFirst, c.pollInterval)
	for {
		var data []byte
		path, _ := jobPath(id, "artifacts", name)
		err := c.within(ctx, "GET "+path, id, func(ctx context.Context) (err error) {
			data, err = c.artifact(ctx, id, name, program)
			return err
		})
		if err == nil || !transient(err) || ctx.Err() != nil {
			return data, err
		}
		if onErr != nil {
			onErr(err)
		}
		wait := retryWait(err, brisk)
		if wait == brisk {
			brisk = min(2*brisk, briskLast, c.pollInterval)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// Result is a finished job.
type Result struct {
	// Job is the job's final record.
	Job *Job
	// Body is Ollama's final response in its non-streamed shape (also for a result too
	// large to inline in the record: then it was read from the "result.json" artifact).
	Body json.RawMessage
}

// Chat decodes the result of a chat job.
func (r *Result) Chat() (*ChatResponse, error) {
	var out ChatResponse
	if err := json.Unmarshal(r.Body, &out); err != nil {
		return nil, fmt.Errorf("client: decode chat result: %w", err)
	}
	return &out, nil
}

// Generate decodes the result of a generate job.
func (r *Result) Generate() (*GenerateResponse, error) {
	var out GenerateResponse
	if err := json.Unmarshal(r.Body, &out); err != nil {
		return nil, fmt.Errorf("client: decode generate result: %w", err)
	}
	return &out, nil
}

// Embed decodes the result of an embed job.
func (r *Result) Embed() (*EmbedResponse, error) {
	var out EmbedResponse
	if err := json.Unmarshal(r.Body, &out); err != nil {
		return nil, fmt.Errorf("client: decode embed result: %w", err)
	}
	return &out, nil
}

// Text is the generated text of a chat or generate result ("" for other kinds).
func (r *Result) Text() string {
	var out struct {
		Message  struct{ Content string } `json:"message"`
		Response string                   `json:"response"`
	}
	_ = json.Unmarshal(r.Body, &out)
	if out.Message.Content != "" {
		return out.Message.Content
	}
	return out.Response
}

// result builds the Result of a done job, reading result.json when it is not inline
// (each read of it that fails for now told to onErr).
func (c *Client) result(ctx context.Context, j *Job, onErr func(error)) (*Result, error) {
	if len(j.Result) > 0 {
		return &Result{Job: j, Body: j.Result}, nil
	}
	for _, a := range j.Artifacts {
		if a.Name != broker.ResultArtifact {
			continue
		}
		if data, ok := a.Bytes(); ok {
			return &Result{Job: j, Body: data}, nil
		}
		body, err := c.awaitArtifact(ctx, j.ID, a.Name, j.Program, onErr)
		if err != nil {
			return nil, err
		}
		return &Result{Job: j, Body: body}, nil
	}
	return &Result{Job: j}, nil
}
