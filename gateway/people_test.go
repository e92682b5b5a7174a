package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// syncCall makes a sync call on path with hdr and returns the job it ran as.
func syncCall(t *testing.T, b *queuedBundle, path string, hdr ...string) jobView {
	t.Helper()
	resp, out := b.request(t, http.MethodPost, path, routeBody(path, "tiny-a", "hi", "false"), hdr...)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s %q: %d %s", path, hdr, resp.StatusCode, out)
	}
	id := resp.Header.Get(HeaderJobID)
	if id == "" {
		t.Fatalf("POST %s: no %s", path, HeaderJobID)
	}
	return jobsGet(t, b.testBundle, id)
}

// natsSubmit sends data on foreman.jobs.submit (RunNATSSubmit must run) and returns the reply.
func natsSubmit(t *testing.T, b *testBundle, data string) submitReply {
	t.Helper()
	return natsSubmitMsg(t, b, &nats.Msg{Data: []byte(data)})
}

// natsSubmitMsg sends m (its subject set here) on foreman.jobs.submit (RunNATSSubmit must
// run) and returns the reply.
func natsSubmitMsg(t *testing.T, b *testBundle, m *nats.Msg) submitReply {
	t.Helper()
	ctx := testCtx(t, 20*time.Second)
	m.Subject = broker.SubmitSubject
	for {
		got, err := b.Broker.Conn.RequestMsgWithContext(ctx, m)
		if errors.Is(err, nats.ErrNoResponders) {
			continue // the responder is still subscribing
		}
		if err != nil {
			t.Fatal(err)
		}
		var r submitReply
		if err := json.Unmarshal(got.Data, &r); err != nil {
			t.Fatalf("reply %.200s", got.Data)
		}
		return r
	}
}

// runNATSSubmit answers foreman.jobs.submit until the test ends.
func runNATSSubmit(t *testing.T, b *testBundle) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.GW.RunNATSSubmit(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("RunNATSSubmit: %v", err)
		}
	})
}

var syncRoutes = []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"}

// Sync calls are high unless X-Foreman-Priority says otherwise; /jobs and NATS submits are
// normal unless the header or the body's "priority" says otherwise.
func TestPriorityDefaultsAndChoices(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	runNATSSubmit(t, b.testBundle)
	for _, path := range syncRoutes {
		if v := syncCall(t, b, path); v.Priority != broker.PriorityHigh {
			t.Errorf("%s without a header: priority %q, want high", path, v.Priority)
		}
		if v := syncCall(t, b, path, HeaderPriority, "low"); v.Priority != broker.PriorityLow {
			t.Errorf("%s with low: priority %q", path, v.Priority)
		}
	}
	cases := []struct {
		body string
		hdr  []string
		want broker.Priority
	}{
		{`{"model":"tiny-a"}`, nil, broker.PriorityNormal},
		{`{"model":"tiny-a","priority":"low"}`, nil, broker.PriorityLow},
		{`{"model":"tiny-a","priority":null}`, nil, broker.PriorityNormal},
		{`{"model":"tiny-a"}`, []string{HeaderPriority, "high"}, broker.PriorityHigh},
		{`{"model":"tiny-a","priority":"high"}`, []string{HeaderPriority, "high"}, broker.PriorityHigh},
	}
	for _, c := range cases {
		id := jobsSubmit(t, b.testBundle, c.body, c.hdr...)
		if v := jobsGet(t, b.testBundle, id); v.Priority != c.want {
			t.Errorf("POST /jobs %s %q: priority %q, want %q", c.body, c.hdr, v.Priority, c.want)
		}
		j, _, err := b.Broker.Store.Get(testCtx(t, 5*time.Second), id)
		if err != nil || j.Priority != c.want {
			t.Errorf("job record of %s: %+v %v", c.body, j, err)
		}
	}
	for body, want := range map[string]broker.Priority{
		`{"model":"tiny-a"}`:                   broker.PriorityNormal,
		`{"model":"tiny-a","priority":"low"}`:  broker.PriorityLow,
		`{"model":"tiny-a","priority":"high"}`: broker.PriorityHigh,
	} {
		r := natsSubmit(t, b.testBundle, body)
		if r.JobID == "" {
			t.Fatalf("NATS %s: %+v", body, r)
		}
		if v := jobsGet(t, b.testBundle, r.JobID); v.Priority != want {
			t.Errorf("NATS %s: priority %q, want %q", body, v.Priority, want)
		}
	}
}

// Anything but high, normal or low is a 400 naming them, on every queued route (an
// OpenAI-shaped error on /v1), in a /jobs body and in a NATS submit.
func TestPriorityBadValues(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	runNATSSubmit(t, b)
	for _, path := range append(syncRoutes, "/jobs") {
		for _, bad := range []string{"urgent", "HIGH", "", "high,low"} {
			resp, out := b.request(t, http.MethodPost, path, routeBody(path, "tiny-a", "hi", "false"), HeaderPriority, bad)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), "high, normal or low") {
				t.Errorf("%s %s: %q: %d %s", path, HeaderPriority, bad, resp.StatusCode, out)
			}
			if strings.HasPrefix(path, "/v1/") {
				var e struct {
					Error struct{ Message, Type string }
				}
				if json.Unmarshal(out, &e) != nil || e.Error.Type != "invalid_request_error" || !strings.Contains(e.Error.Message, "high, normal or low") {
					t.Errorf("%s: not an OpenAI error: %s", path, out)
				}
			}
		}
	}
	req, err := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodPost, b.URL+"/jobs", strings.NewReader(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Add(HeaderPriority, "low")
	req.Header.Add(HeaderPriority, "high")
	twice, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	twice.Body.Close()
	if twice.StatusCode != http.StatusBadRequest {
		t.Errorf("%s sent twice: %d", HeaderPriority, twice.StatusCode)
	}
	for _, body := range []string{`{"model":"tiny-a","priority":"urgent"}`, `{"model":"tiny-a","priority":1}`, `{"model":"tiny-a","priority":""}`} {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body))
		wantJobError(t, body, resp, out, http.StatusBadRequest)
		if r := natsSubmit(t, b, body); r.Status != http.StatusBadRequest || r.JobID != "" || !strings.Contains(r.Error, "priority") {
			t.Errorf("NATS %s: %+v", body, r)
		}
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","priority":"low"}`), HeaderPriority, "high")
	wantJobError(t, "header and body disagree", resp, out, http.StatusBadRequest)
	if n, _ := b.Broker.Store.QueueLen(testCtx(t, 5*time.Second)); n != 0 {
		t.Fatalf("refused submits queued %d jobs", n)
	}
}

// The two defaults are settings.
func TestPriorityDefaultsConfigurable(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) {
		c.SyncPriority, c.JobsPriority = broker.PriorityNormal, broker.PriorityLow
	}))
	if v := syncCall(t, b, "/api/chat"); v.Priority != broker.PriorityNormal {
		t.Errorf("sync priority %q, want the configured normal", v.Priority)
	}
	if v := jobsGet(t, b.testBundle, jobsSubmit(t, b.testBundle, `{"model":"tiny-a"}`)); v.Priority != broker.PriorityLow {
		t.Errorf("/jobs priority %q, want the configured low", v.Priority)
	}
	if _, err := New(Config{Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv, JobsPriority: "urgent"}); err == nil || !strings.Contains(err.Error(), "high, normal or low") {
		t.Errorf("a bad configured priority: %v", err)
	}
}

// A record from before priorities reads as normal.
func TestJobViewOldRecordIsNormal(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	v := b.GW.jobView(context.Background(), &broker.Job{ID: broker.NewID(), State: broker.StateDone}, false)
	if v.Priority != broker.PriorityNormal || v.Program != "" {
		t.Fatalf("old record: priority %q program %q", v.Priority, v.Program)
	}
}

// Without named tokens the program is X-Foreman-Program or the body's "program"; no
// program is the anonymous one; a bad name is a 400.
func TestProgramFromHeaderOrBody(t *testing.T) {
	t.Parallel()
	for _, auth := range []string{"", "single"} {
		t.Run("token="+auth, func(t *testing.T) {
			t.Parallel()
			b := newQueuedBundle(t, nil, withGateway(func(c *Config) { c.AuthToken = auth }))
			runNATSSubmit(t, b.testBundle)
			for _, path := range syncRoutes {
				if v := syncCall(t, b, path, HeaderProgram, "nightly-batch.v2"); v.Program != "nightly-batch.v2" {
					t.Errorf("%s: program %q", path, v.Program)
				}
				if v := syncCall(t, b, path); v.Program != "" {
					t.Errorf("%s without a program: %q", path, v.Program)
				}
			}
			cases := []struct {
				body string
				hdr  []string
				want string
			}{
				{`{"model":"tiny-a"}`, nil, ""},
				{`{"model":"tiny-a","program":"indexer"}`, nil, "indexer"},
				{`{"model":"tiny-a"}`, []string{HeaderProgram, "indexer"}, "indexer"},
				{`{"model":"tiny-a","program":"indexer"}`, []string{HeaderProgram, "indexer"}, "indexer"},
			}
			for _, c := range cases {
				if v := jobsGet(t, b.testBundle, jobsSubmit(t, b.testBundle, c.body, c.hdr...)); v.Program != c.want {
					t.Errorf("POST /jobs %s %q: program %q, want %q", c.body, c.hdr, v.Program, c.want)
				}
			}
			r := natsSubmit(t, b.testBundle, `{"model":"tiny-a","program":"nats-prog"}`)
			if v := jobsGet(t, b.testBundle, r.JobID); v.Program != "nats-prog" {
				t.Errorf("NATS program %q (%+v)", v.Program, r)
			}
			long := strings.Repeat("a", 65)
			for _, bad := range []string{"", "has space", "ünïcode", "a/b", long, "a:b"} {
				for _, path := range append(syncRoutes, "/jobs") {
					resp, out := b.request(t, http.MethodPost, path, routeBody(path, "tiny-a", "hi", "false"), HeaderProgram, bad)
					if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), "A-Z a-z 0-9") {
						t.Errorf("%s %s %q: %d %s", path, HeaderProgram, bad, resp.StatusCode, out)
					}
				}
				body, _ := json.Marshal(map[string]string{"model": "tiny-a", "program": bad})
				resp, out := b.request(t, http.MethodPost, "/jobs", body)
				wantJobError(t, "body program "+bad, resp, out, http.StatusBadRequest)
				if r := natsSubmit(t, b.testBundle, string(body)); r.Status != http.StatusBadRequest {
					t.Errorf("NATS program %q: %+v", bad, r)
				}
			}
			if v := jobsGet(t, b.testBundle, jobsSubmit(t, b.testBundle, `{"model":"tiny-a","program":"`+long[:64]+`"}`)); v.Program != long[:64] {
				t.Errorf("a 64-character name: %q", v.Program)
			}
			resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a","program":"x"}`), HeaderProgram, "y")
			wantJobError(t, "header and body disagree", resp, out, http.StatusBadRequest)
		})
	}
}

// With named tokens each token is accepted and its name is the program, whatever the
// request claims; a wrong token is 401; logs show names, never tokens.
func TestNamedTokens(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	b := newQueuedBundle(t, nil, withGateway(func(c *Config) {
		c.AuthTokens = []NamedToken{{"alice", "tokenA-secret"}, {"bob", "tokenB-secret"}, {"alice", "tokenA2-secret"}}
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}))
	b.Token = "tokenB-secret" // for the helpers' reads
	auth := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
	for tok, want := range map[string]string{"tokenA-secret": "alice", "tokenB-secret": "bob", "tokenA2-secret": "alice"} {
		for _, path := range syncRoutes {
			if v := syncCall(t, b, path, append(auth(tok), HeaderProgram, "mallory")...); v.Program != want {
				t.Errorf("%s with %s's token and X-Foreman-Program: mallory: program %q", path, want, v.Program)
			}
		}
		id := jobsSubmit(t, b.testBundle, `{"model":"tiny-a","program":"mallory"}`, append(auth(tok), HeaderProgram, "mallory")...)
		if v := jobsGet(t, b.testBundle, id); v.Program != want {
			t.Errorf("/jobs with %s's token claiming mallory: program %q", want, v.Program)
		}
	}
	// Sent both ways, the first token that matches names the program: the bearer token,
	// else the X-Api-Key.
	for _, c := range []struct {
		hdr  []string
		want string
	}{
		{[]string{"Authorization", "Bearer tokenA-secret", "X-Api-Key", "tokenB-secret"}, "alice"},
		{[]string{"Authorization", "Bearer tokenB-secret", "X-Api-Key", "tokenA-secret"}, "bob"},
		{[]string{"Authorization", "Bearer wrong", "X-Api-Key", "tokenA2-secret"}, "alice"},
	} {
		if v := jobsGet(t, b.testBundle, jobsSubmit(t, b.testBundle, `{"model":"tiny-a"}`, c.hdr...)); v.Program != c.want {
			t.Errorf("/jobs with %q: program %q, want %q", c.hdr, v.Program, c.want)
		}
	}
	for _, tok := range []string{"", "tokenA", "tokenA-secret2", "tokenB-secreT", "alice", "alice:tokenA-secret"} {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a"}`), auth(tok)...)
		wantError(t, resp, out, http.StatusUnauthorized, "unauthorized")
	}
	resp, out := b.request(t, http.MethodGet, "/healthz", nil, "Authorization", "x")
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz without a token: %d %s", resp.StatusCode, out)
	}
	got := logs.String()
	if !strings.Contains(got, "program=alice") || !strings.Contains(got, "program=bob") {
		t.Errorf("the logs do not name the programs:\n%s", got)
	}
	if strings.Contains(got, "secret") {
		t.Errorf("a token reached the logs:\n%s", got)
	}
}

// A token listed twice, a bad name, or both kinds of token are refused at New.
func TestNamedTokensConfig(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	base := Config{Store: b.Broker.Store, Target: b.Target, Inventory: b.Inv}
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.AuthToken, c.AuthTokens = "x", []NamedToken{{"a", "y"}} }, "exclude each other"},
		{func(c *Config) { c.AuthTokens = []NamedToken{{"a", "same"}, {"b", "same"}} }, "also the token of a"},
		{func(c *Config) { c.AuthTokens = []NamedToken{{"a b", "t"}} }, "invalid program name"},
		{func(c *Config) { c.AuthTokens = []NamedToken{{"a", ""}} }, "empty token"},
	} {
		cfg := base
		c.mod(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", cfg.AuthTokens, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "same") {
			t.Errorf("the error shows a token: %v", err)
		}
	}
}

func TestParseAuthTokens(t *testing.T) {
	t.Parallel()
	got, err := ParseAuthTokens(" alice:tokenA , bob:tok:en:B,")
	if err != nil || len(got) != 2 || got[0] != (NamedToken{"alice", "tokenA"}) || got[1] != (NamedToken{"bob", "tok:en:B"}) {
		t.Fatalf("ParseAuthTokens: %+v %v", got, err)
	}
	got, err = ParseAuthTokensFile([]byte("# programs\nalice:tokenA\n\n  # old\r\nbob:tokenB\r\n"))
	if err != nil || len(got) != 2 || got[1] != (NamedToken{"bob", "tokenB"}) {
		t.Fatalf("ParseAuthTokensFile: %+v %v", got, err)
	}
	for _, bad := range []string{"", "alice", "alice:", ":tokenA", "al ice:tokenA", "alice:tokenA,bob"} {
		if _, err := ParseAuthTokens(bad); err == nil {
			t.Errorf("ParseAuthTokens(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "tokenA") {
			t.Errorf("ParseAuthTokens(%q): the error shows a token: %v", bad, err)
		}
	}
	if _, err := ParseAuthTokensFile([]byte("alice:tokenA\nbob tokenB\n")); err == nil || !strings.Contains(err.Error(), "line 2") || strings.Contains(err.Error(), "tokenB") {
		t.Errorf("a bad line: %v", err)
	}
}

// A comment after a token (a line starting with # is one) is no part of it: the line is
// refused rather than read as the token "tokenB # bob's laptop", which no caller sends,
// so that every call of that program would get 401. So is a token with a control
// character, which no header carries.
func TestParseAuthTokensRefusesACommentAfterAToken(t *testing.T) {
	t.Parallel()
	if _, err := ParseAuthTokensFile([]byte("alice:tokenA\nbob:tokenB # bob's laptop\n")); err == nil {
		t.Error("a token followed by a comment was accepted")
	} else if !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "comment") || strings.Contains(err.Error(), "tokenB") {
		t.Errorf("the error does not name the line and the comment, or shows the token: %v", err)
	}
	for _, bad := range []string{"bob:tokenB\t#laptop", "bob:tok\x01enB", "bob:tok\x7fenB"} {
		if _, err := ParseAuthTokens(bad); err == nil {
			t.Errorf("ParseAuthTokens(%q) accepted", bad)
		} else if strings.Contains(err.Error(), "enB") {
			t.Errorf("ParseAuthTokens(%q): the error shows the token: %v", bad, err)
		}
	}
	// A # within a token, and white space within one (a pass phrase), are sent as they are.
	for _, good := range []string{"tok#enB", "tok enB", "#tokenB"} {
		if got, err := ParseAuthTokensFile([]byte("bob:" + good + "\r\n")); err != nil || got[0].Token != good {
			t.Errorf("the token %q: %+v %v", good, got, err)
		}
	}
}

// GET /jobs?program= lists one program's jobs.
func TestListJobsByProgram(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	a1 := jobsSubmit(t, b, `{"model":"tiny-a","program":"alice"}`)
	jobsSubmit(t, b, `{"model":"tiny-a","program":"bob"}`)
	jobsSubmit(t, b, `{"model":"tiny-a"}`)
	a2 := jobsSubmit(t, b, `{"model":"tiny-b"}`, HeaderProgram, "alice")
	if got := ids(jobsList(t, b, "?program=alice")); len(got) != 2 || got[0] != a2 || got[1] != a1 {
		t.Fatalf("program=alice: %v", got)
	}
	if got := jobsList(t, b, "?program=alice&model=tiny-b"); len(got) != 1 || got[0].Program != "alice" {
		t.Fatalf("program and model: %v", ids(got))
	}
	if got := jobsList(t, b, ""); len(got) != 4 {
		t.Fatalf("no filter: %v", ids(got))
	}
	resp, out := b.request(t, http.MethodGet, "/jobs?program=a%20b", nil)
	wantJobError(t, "bad program filter", resp, out, http.StatusBadRequest)
	// "program" and "priority" are foreman's fields: the target never sees them.
	if got := queuedBody(t, b.Broker.Store, "tiny-a"); string(got) != `{"model":"tiny-a"}` {
		t.Errorf("queued body %s", got)
	}
	jobsSubmit(t, b, `{"priority":"low","model":"tiny-embed","program":"carol","input":"x","kind":"embed"}`)
	if got := queuedBody(t, b.Broker.Store, "tiny-embed"); string(got) != `{"model":"tiny-embed","input":"x"}` {
		t.Errorf("queued body %s", got)
	}
}

// A program over FOREMAN_MAX_QUEUE_PER_PROGRAM gets 429 with Retry-After; other programs
// (the anonymous one included) are unaffected.
func TestPerProgramLimit(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxQueuePerProgram = 2 }))
	runNATSSubmit(t, b)
	jobsSubmit(t, b, `{"model":"tiny-a","program":"alice"}`)
	jobsSubmit(t, b, `{"model":"tiny-b"}`, HeaderProgram, "alice")
	for _, path := range append(syncRoutes, "/jobs") {
		resp, out := b.request(t, http.MethodPost, path, routeBody(path, "tiny-a", "hi", "false"), HeaderProgram, "alice")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(out), `program \"alice\" has 2 jobs queued`) {
			t.Errorf("%s over alice's limit: %d Retry-After %q %s", path, resp.StatusCode, resp.Header.Get("Retry-After"), out)
		}
	}
	if r := natsSubmit(t, b, `{"model":"tiny-a","program":"alice"}`); r.Status != http.StatusTooManyRequests || r.JobID != "" {
		t.Errorf("NATS over alice's limit: %+v", r)
	}
	jobsSubmit(t, b, `{"model":"tiny-a","program":"bob"}`)
	jobsSubmit(t, b, `{"model":"tiny-a"}`)
	if r := natsSubmit(t, b, `{"model":"tiny-a"}`); r.JobID == "" {
		t.Errorf("NATS anonymous submit: %+v", r)
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-a"}`))
	wantJobError(t, "anonymous over its limit", resp, out, http.StatusTooManyRequests)
	if n, want := metricValue(scrape(t, b), "foreman_requests_refused_total", "reason", "program_limit"), float64(len(syncRoutes)+3); n != want {
		t.Errorf("refusals counted: %v, want %v (HTTP, NATS, anonymous)", n, want)
	}
	// A job leaving the queue makes room.
	first := jobsList(t, b, "?program=alice")[1]
	if _, err := b.Broker.Store.Cancel(testCtx(t, 5*time.Second), first.ID, ""); err != nil {
		t.Fatal(err)
	}
	jobsSubmit(t, b, `{"model":"tiny-a","program":"alice"}`)
}

// Concurrent submits of one program cannot pass its limit together.
func TestPerProgramLimitConcurrent(t *testing.T) {
	t.Parallel()
	const limit, submits = 3, 16
	b := newTestBundle(t, withGateway(func(c *Config) { c.MaxQueuePerProgram = limit }))
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		status = map[int]int{}
	)
	start := make(chan struct{})
	for i := range submits {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r := post(t, testCtx(t, 20*time.Second), b.URL, "/jobs", fmt.Appendf(nil, `{"model":"tiny-a","program":"alice","prompt":"%d"}`, i))
			mu.Lock()
			status[r.Status]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if status[http.StatusAccepted] != limit || status[http.StatusTooManyRequests] != submits-limit {
		t.Fatalf("answers %v, want %d accepted and %d refused", status, limit, submits-limit)
	}
}

// TestParseAuthTokensHidesATokenWrittenFirst: an entry written the other way round,
// token:name, has the token where the name goes; a token that is no program name (a
// base64 one with "+", "/" or "=", one longer than 64 characters) is refused as a name,
// and the refusal, which goes to the terminal and the service's log, must not show it.
func TestParseAuthTokensHidesATokenWrittenFirst(t *testing.T) {
	t.Parallel()
	const token = "q8Zr+Wc/0fTk1Yx3vB9nLm2=" // openssl rand -base64 18
	for _, bad := range []string{token + ":alice", "bob:tokenB," + token + ":alice", strings.Repeat("f", 80) + ":alice"} {
		_, err := ParseAuthTokens(bad)
		if err == nil {
			t.Fatalf("ParseAuthTokens(%q) accepted", bad)
		}
		if secret, _, _ := strings.Cut(bad[strings.LastIndex(bad, ",")+1:], ":"); strings.Contains(err.Error(), secret) {
			t.Errorf("ParseAuthTokens(%q): the error shows the token written first: %v", bad, err)
		}
	}
	_, err := ParseAuthTokensFile([]byte("alice:tokenA\n" + token + ":bob\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") || strings.Contains(err.Error(), token) {
		t.Errorf("a token written first in the file: %v", err)
	}
}
