package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// goroutineSlack is how many goroutines a settled foreman may have beyond the count it
// settled at before: a timer's or a connection's goroutine caught as it ends.
const goroutineSlack = 2

// soakPasses is how many times the second round drives every kind of call: a call that
// leaves one goroutine behind leaves more than goroutineSlack.
const soakPasses = 3

// tokenGate stalls the fake's replies before their second token while it is armed, until
// the request goes away or the gate is opened: a stream the caller leaves in its middle.
type tokenGate struct {
	mu    sync.Mutex
	armed bool
	open  chan struct{}
	hit   chan struct{} // a reply reached the gate (buffered: the first one is kept)
}

func newTokenGate() *tokenGate { return &tokenGate{hit: make(chan struct{}, 1)} }

func (g *tokenGate) arm() {
	g.mu.Lock()
	g.armed, g.open = true, make(chan struct{})
	g.mu.Unlock()
}

func (g *tokenGate) release() {
	g.mu.Lock()
	if g.armed {
		g.armed = false
		close(g.open)
	}
	g.mu.Unlock()
}

func (g *tokenGate) before(ctx context.Context, i int) error {
	g.mu.Lock()
	armed, open := g.armed, g.open
	g.mu.Unlock()
	if !armed || i != 1 {
		return nil
	}
	select {
	case g.hit <- struct{}{}:
	default:
	}
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// soaker drives a foreman with every kind of call, on an HTTP client of its own whose idle
// connections it closes before counting goroutines.
type soaker struct {
	t     *testing.T
	b     *queuedBundle
	gate  *tokenGate
	hc    *http.Client
	tr    *http.Transport
	mu    sync.Mutex
	jobs  []string // the /jobs and NATS jobs submitted
	calls atomic.Int64
}

func (s *soaker) addJob(id string) {
	s.mu.Lock()
	s.jobs = append(s.jobs, id)
	s.mu.Unlock()
}

// do sends one request on ctx and reads its answer whole; a transport error (the caller
// left) is returned, not fatal.
func (s *soaker) do(ctx context.Context, method, path string, body []byte) (int, []byte, http.Header, error) {
	s.calls.Add(1)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.b.URL+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// Programs: what foreman keeps per program while its calls run must go when they
	// end. A few names, not one per call: each (model, program) queue has a JetStream
	// consumer, with its goroutines, for an hour after its last job (ADR-0071), bounded
	// by the server's limit of consumers, not by the calls' end: the program follows the
	// path, so the first round has made every queue the later ones use.
	if n := crc32.ChecksumIEEE([]byte(path)) % 4; n != 0 {
		req.Header.Set(HeaderProgram, fmt.Sprintf("soak-%d", n))
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, resp.Header, err
}

// want sends one request and requires status.
func (s *soaker) want(ctx context.Context, status int, method, path string, body []byte) []byte {
	code, out, _, err := s.do(ctx, method, path, body)
	if err != nil {
		s.t.Errorf("%s %s: %v", method, path, err)
		return nil
	}
	if code != status {
		s.t.Errorf("%s %s %s: %d %s, want %d", method, path, body, code, out, status)
	}
	return out
}

// parallel runs fn(i) for i in [0, n) at once and waits for them.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(i) })
	}
	wg.Wait()
}

// waitQueued waits until n jobs are in the queue (waiting or running): 0 for a queue
// whose last job's message is gone, else at least n.
func (s *soaker) waitQueued(ctx context.Context, n uint64) {
	s.t.Helper()
	eventually(s.t, 20*time.Second, fmt.Sprintf("%d jobs queued", n), func() bool {
		got, err := s.b.Broker.Store.QueueLen(ctx)
		return err == nil && (got >= n && n > 0 || got == n)
	})
}

// round drives one soak round of every kind of call; r tells rounds' prompts apart.
func (s *soaker) round(ctx context.Context, r int) {
	s.syncCalls(ctx, r)
	s.refusals(ctx, r)
	s.jobsAPI(ctx, r)
	s.natsJobs(ctx, r)
	s.leaveWhileQueued(ctx, r)
	s.leaveWhileStreaming(ctx, r)
	s.leaveMidUpload(ctx, r)
	s.stallUpload(ctx, r)
	s.targetFails(ctx, r)
	s.targetHangs(ctx, r)
	s.targetDown(ctx, r)
}

// syncCalls: chat and generate, streamed and not, native and OpenAI.
func (s *soaker) syncCalls(ctx context.Context, r int) {
	paths := []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"}
	streams := []string{"", "true", "false"}
	models := []string{"tiny-a", "tiny-b"}
	parallel(48, func(i int) {
		path, stream, model := paths[i%4], streams[i/4%3], models[i/12%2]
		if strings.HasPrefix(path, "/v1/") && stream == "" {
			stream = "true"
		}
		s.want(ctx, http.StatusOK, http.MethodPost, path, routeBody(path, model, fmt.Sprintf("soak %d.%d", r, i), stream))
	})
	// The other routes: Responses and Messages (queued), embeddings (of an embedding model
	// straight to the target, of a chat model queued), the metadata, the status page.
	others := []struct{ method, path, body string }{
		{http.MethodPost, "/v1/responses", fmt.Sprintf(`{"model":"tiny-a","input":"soak %d"}`, r)},
		{http.MethodPost, "/v1/responses", fmt.Sprintf(`{"model":"tiny-b","input":"soak %d","stream":true}`, r)},
		{http.MethodPost, "/v1/messages", fmt.Sprintf(`{"model":"tiny-a","max_tokens":8,"messages":[{"role":"user","content":"soak %d"}]}`, r)},
		{http.MethodPost, "/v1/messages", fmt.Sprintf(`{"model":"tiny-b","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"soak %d"}]}`, r)},
		{http.MethodPost, "/api/embed", fmt.Sprintf(`{"model":"tiny-embed","input":"soak %d"}`, r)},
		{http.MethodPost, "/api/embed", fmt.Sprintf(`{"model":"tiny-a","input":"soak %d"}`, r)},
		{http.MethodPost, "/api/embeddings", fmt.Sprintf(`{"model":"tiny-embed","prompt":"soak %d"}`, r)},
		{http.MethodPost, "/v1/embeddings", fmt.Sprintf(`{"model":"tiny-embed","input":"soak %d"}`, r)},
		{http.MethodPost, "/api/show", `{"model":"tiny-a"}`},
		{http.MethodGet, "/api/tags", ""},
		{http.MethodGet, "/api/ps", ""},
		{http.MethodGet, "/api/version", ""},
		{http.MethodGet, "/v1/models", ""},
		{http.MethodGet, "/v1/models/tiny-a", ""},
		{http.MethodGet, "/healthz", ""},
		{http.MethodGet, "/ui/", ""},
	}
	parallel(len(others), func(i int) {
		c := others[i]
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		s.want(ctx, http.StatusOK, c.method, c.path, body)
	})
}

// refusals: bad bodies, an unknown model, unknown jobs and routes, all 4xx.
func (s *soaker) refusals(ctx context.Context, r int) {
	type call struct {
		method, path, body string
		status             int
	}
	calls := []call{
		{http.MethodPost, "/api/chat", `{`, http.StatusBadRequest},
		{http.MethodPost, "/api/chat", `{"model":"tiny-a","messages":7}`, http.StatusBadRequest},
		{http.MethodPost, "/api/generate", `[]`, http.StatusBadRequest},
		{http.MethodPost, "/v1/chat/completions", `{"model":"tiny-a"}`, http.StatusBadRequest},
		{http.MethodPost, "/jobs", `{"model":"tiny-a","kind":"nonsense"}`, http.StatusBadRequest},
		{http.MethodPost, "/jobs", `nope`, http.StatusBadRequest},
		{http.MethodGet, "/jobs/not-a-job", "", http.StatusBadRequest},
		{http.MethodGet, "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", "", http.StatusNotFound},
		{http.MethodDelete, "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", "", http.StatusNotFound},
		{http.MethodGet, "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/artifacts/result.json", "", http.StatusNotFound},
		{http.MethodGet, "/nowhere", "", http.StatusNotFound},
	}
	parallel(len(calls)+8, func(i int) {
		if i >= len(calls) {
			model := fmt.Sprintf("unknown-%d-%d", r, i)
			path := []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/jobs"}[i%4]
			code, out, _, err := s.do(ctx, http.MethodPost, path, routeBody(path, model, "x", "false"))
			if err != nil || code != http.StatusNotFound {
				s.t.Errorf("POST %s for %s: %d %s (%v), want 404", path, model, code, out, err)
			}
			return
		}
		c := calls[i]
		var body []byte
		if c.body != "" {
			body = []byte(c.body)
		}
		code, out, _, err := s.do(ctx, c.method, c.path, body)
		if err != nil || code != c.status {
			s.t.Errorf("%s %s %s: %d %s (%v), want %d", c.method, c.path, c.body, code, out, err, c.status)
		}
	})
}

// jobsAPI: POST /jobs, GET /jobs/{id}, GET /jobs, the artifacts once done, and a
// cancel of queued jobs.
func (s *soaker) jobsAPI(ctx context.Context, r int) {
	ids := make([]string, 12)
	parallel(len(ids), func(i int) {
		body := fmt.Sprintf(`{"model":"tiny-%c","messages":[{"role":"user","content":"job %d.%d"}]}`, 'a'+i%2, r, i)
		if i%3 == 0 {
			body = fmt.Sprintf(`{"model":"tiny-a","prompt":"job %d.%d","kind":"generate"}`, r, i)
		}
		var sub submitted
		if err := json.Unmarshal(s.want(ctx, http.StatusAccepted, http.MethodPost, "/jobs", []byte(body)), &sub); err == nil {
			ids[i] = sub.JobID
			s.addJob(sub.JobID)
		}
		s.want(ctx, http.StatusOK, http.MethodGet, "/jobs/"+sub.JobID, nil)
	})
	s.want(ctx, http.StatusOK, http.MethodGet, "/jobs?limit=20", nil)
	s.want(ctx, http.StatusOK, http.MethodGet, "/queue", nil)
	s.want(ctx, http.StatusOK, http.MethodGet, "/metrics", nil)
	for _, id := range ids {
		if id != "" {
			waitRecord(s.t, ctx, s.b.Broker.Store, id, func(j *broker.Job) bool { return j.State.Terminal() })
		}
	}
	parallel(len(ids), func(i int) {
		if ids[i] != "" {
			s.want(ctx, http.StatusOK, http.MethodGet, "/jobs/"+ids[i]+"/artifacts/result.json", nil)
		}
	})
	// Cancels: of jobs waiting behind one the target holds, and of the held one itself.
	release := s.b.Fake.Hold("tiny-b")
	defer release()
	held := make([]string, 4)
	for i := range held {
		var sub submitted
		body := fmt.Sprintf(`{"model":"tiny-b","messages":[{"role":"user","content":"cancel %d.%d"}]}`, r, i)
		if err := json.Unmarshal(s.want(ctx, http.StatusAccepted, http.MethodPost, "/jobs", []byte(body)), &sub); err == nil {
			held[i] = sub.JobID
			s.addJob(sub.JobID)
		}
	}
	if err := s.b.Fake.WaitInFlight(ctx, 1); err != nil {
		s.t.Fatalf("the held job: %v", err)
	}
	parallel(len(held), func(i int) {
		if held[i] != "" {
			s.want(ctx, http.StatusOK, http.MethodDelete, "/jobs/"+held[i], nil)
		}
	})
}

// natsJobs: submits on foreman.jobs.submit, each followed on its state subject until it
// ends.
func (s *soaker) natsJobs(ctx context.Context, r int) {
	nc := s.b.Broker.Conn
	parallel(8, func(i int) {
		body := fmt.Sprintf(`{"model":"tiny-a","prompt":"nats %d.%d","kind":"generate"}`, r, i)
		var reply submitReply
		for {
			m, err := nc.RequestWithContext(ctx, broker.SubmitSubject, []byte(body))
			if errors.Is(err, nats.ErrNoResponders) {
				continue // the responder is still subscribing
			}
			if err != nil {
				s.t.Errorf("NATS submit: %v", err)
				return
			}
			if err := json.Unmarshal(m.Data, &reply); err != nil || reply.JobID == "" {
				s.t.Errorf("NATS submit reply %s (%v)", m.Data, err)
				return
			}
			break
		}
		s.addJob(reply.JobID)
		events := make(chan *nats.Msg, 64)
		sub, err := nc.ChanSubscribe("foreman.job."+reply.JobID+".state", events)
		if err != nil {
			s.t.Errorf("subscribe: %v", err)
			return
		}
		defer func() { _ = sub.Unsubscribe() }()
		// The job may have ended before the subscription: its record tells.
		if j, _, err := s.b.Broker.Store.Get(ctx, reply.JobID); err == nil && j.State.Terminal() {
			return
		}
		for {
			select {
			case m := <-events:
				if j, err := broker.DecodeJob(m.Data); err == nil && j.State.Terminal() {
					return
				}
			case <-ctx.Done():
				s.t.Errorf("NATS job %s: no end: %v", reply.JobID, ctx.Err())
				return
			}
		}
	})
}

// leaveWhileQueued: callers that hang up while their job waits behind one the target
// holds.
func (s *soaker) leaveWhileQueued(ctx context.Context, r int) {
	release := s.b.Fake.Hold("")
	defer release()
	s.waitQueued(ctx, 0)
	blocker := make(chan struct{})
	go func() {
		defer close(blocker)
		s.want(ctx, http.StatusOK, http.MethodPost, "/api/chat", routeBody("/api/chat", "tiny-a", fmt.Sprintf("blocker %d", r), "false"))
	}()
	if err := s.b.Fake.WaitInFlight(ctx, 1); err != nil {
		s.t.Fatalf("the blocker: %v", err)
	}
	callCtx, hangUp := context.WithCancel(ctx)
	done := make(chan struct{})
	const n = 8
	go func() {
		defer close(done)
		paths := []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"}
		parallel(n, func(i int) {
			path := paths[i%4]
			stream := []string{"true", "false"}[i/4%2]
			_, _, _, err := s.do(callCtx, http.MethodPost, path, routeBody(path, "tiny-b", fmt.Sprintf("left %d.%d", r, i), stream))
			if err == nil {
				s.t.Errorf("a call left while queued got its answer")
			}
		})
	}()
	s.waitQueued(ctx, n+1)
	hangUp()
	<-done
	release()
	<-blocker
}

// leaveWhileStreaming: callers that hang up after the first frame of their stream.
func (s *soaker) leaveWhileStreaming(ctx context.Context, r int) {
	paths := []string{"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"}
	for i, path := range paths {
		s.gate.arm()
		callCtx, hangUp := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(callCtx, http.MethodPost, s.b.URL+path,
			bytes.NewReader(routeBody(path, []string{"tiny-a", "tiny-b"}[i%2], fmt.Sprintf("stream %d.%d", r, i), "true")))
		if err != nil {
			s.t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		s.calls.Add(1)
		resp, err := s.hc.Do(req)
		if err != nil {
			s.t.Fatalf("%s: %v", path, err)
		}
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			s.t.Errorf("%s: the first frame: %v", path, err)
		}
		select {
		case <-s.gate.hit:
		case <-ctx.Done():
			s.t.Fatalf("%s: the reply never reached its second token", path)
		}
		hangUp()
		resp.Body.Close()
		s.gate.release()
	}
}

// leaveMidUpload: callers that hang up in the middle of sending their body.
func (s *soaker) leaveMidUpload(ctx context.Context, r int) {
	parallel(6, func(i int) {
		path := []string{"/api/chat", "/jobs", "/v1/chat/completions"}[i%3]
		pr, pw := io.Pipe()
		callCtx, hangUp := context.WithCancel(ctx)
		defer hangUp()
		req, err := http.NewRequestWithContext(callCtx, http.MethodPost, s.b.URL+path, pr)
		if err != nil {
			s.t.Error(err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = 1 << 20
		s.calls.Add(1)
		answered := make(chan error, 1)
		go func() {
			resp, err := s.hc.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			answered <- err
		}()
		// The write returns once the transport took it: the request is on its way.
		if _, err := fmt.Fprintf(pw, `{"model":"tiny-a","messages":[{"role":"user","content":"upload %d.%d `, r, i); err != nil {
			s.t.Error(err)
		}
		hangUp()
		_ = pw.CloseWithError(context.Canceled)
		<-answered
	})
}

// stallUpload: callers that send half a body and then nothing, connected, until
// BodyReadTimeout answers them 408.
func (s *soaker) stallUpload(ctx context.Context, r int) {
	parallel(3, func(i int) {
		path := []string{"/api/chat", "/jobs", "/v1/chat/completions"}[i]
		pr, pw := io.Pipe()
		defer pw.Close()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.b.URL+path, pr)
		if err != nil {
			s.t.Error(err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = 1 << 10
		s.calls.Add(1)
		go func() {
			_, _ = fmt.Fprintf(pw, `{"model":"tiny-a","messages":[{"role":"user","content":"stalled %d.%d `, r, i)
		}()
		resp, err := s.hc.Do(req)
		if err != nil {
			s.t.Errorf("%s with a stalled body: %v", path, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			s.t.Errorf("%s with a stalled body: %d, want 408", path, resp.StatusCode)
		}
	})
}

// targetFails: the target answers 500 to some calls and jobs.
func (s *soaker) targetFails(ctx context.Context, r int) {
	s.b.Fake.FailNextOn("/api/chat", 3, ollamatest.Fail500)
	parallel(3, func(i int) {
		code, out, _, err := s.do(ctx, http.MethodPost, "/api/chat", routeBody("/api/chat", "tiny-a", fmt.Sprintf("fail %d.%d", r, i), "false"))
		if err != nil || code != http.StatusInternalServerError {
			s.t.Errorf("a chat the target fails: %d %s (%v), want 500", code, out, err)
		}
	})
	s.b.Fake.FailNextOn("/api/chat", 2, ollamatest.StreamError("fake: runner died"))
	parallel(2, func(i int) {
		_, _, _, _ = s.do(ctx, http.MethodPost, "/api/chat", routeBody("/api/chat", "tiny-b", fmt.Sprintf("fail stream %d.%d", r, i), "true"))
	})
}

// targetHangs: the target holds its answers, then lets them go.
func (s *soaker) targetHangs(ctx context.Context, r int) {
	release := s.b.Fake.Hold("tiny-b")
	defer release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		parallel(4, func(i int) {
			path := []string{"/api/chat", "/v1/chat/completions"}[i%2]
			s.want(ctx, http.StatusOK, http.MethodPost, path, routeBody(path, "tiny-b", fmt.Sprintf("hang %d.%d", r, i), []string{"true", "false"}[i/2]))
		})
	}()
	if err := s.b.Fake.WaitInFlight(ctx, 1); err != nil {
		s.t.Fatalf("the held call: %v", err)
	}
	release()
	<-done
}

// targetDown: the target refuses every connection for a while: metadata and embedding
// calls fail at once, a chat's caller gives up on its waiting job, a /jobs job waits the
// outage out.
func (s *soaker) targetDown(ctx context.Context, r int) {
	s.b.Fake.SetDown(true)
	defer s.b.Fake.SetDown(false)
	s.waitQueued(ctx, 0)
	parallel(4, func(i int) {
		switch i {
		case 0:
			_, _, _, _ = s.do(ctx, http.MethodPost, "/api/show", []byte(`{"model":"tiny-a"}`))
		case 1:
			_, _, _, _ = s.do(ctx, http.MethodPost, "/api/embed", []byte(`{"model":"tiny-embed","input":"x"}`))
		case 2:
			_, _, _, _ = s.do(ctx, http.MethodGet, "/api/ps", nil)
		case 3:
			_, _, _, _ = s.do(ctx, http.MethodGet, "/healthz", nil)
		}
	})
	var sub submitted
	body := fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":"down %d"}]}`, r)
	if err := json.Unmarshal(s.want(ctx, http.StatusAccepted, http.MethodPost, "/jobs", []byte(body)), &sub); err == nil {
		s.addJob(sub.JobID)
	}
	callCtx, hangUp := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _, _ = s.do(callCtx, http.MethodPost, "/api/chat", routeBody("/api/chat", "tiny-a", fmt.Sprintf("down chat %d", r), "false"))
	}()
	s.waitQueued(ctx, 2)
	hangUp()
	<-done
	s.b.Fake.SetDown(false)
	if sub.JobID != "" {
		waitRecord(s.t, ctx, s.b.Broker.Store, sub.JobID, func(j *broker.Job) bool { return j.State.Terminal() })
	}
}

// settle waits until no job is queued or running, every job submitted has ended and the
// target serves no call, then closes the idle connections of the soak's client and the
// gateway's target client.
func (s *soaker) settle(ctx context.Context) {
	s.t.Helper()
	st := s.b.Broker.Store
	eventually(s.t, 30*time.Second, "the queue empty and every job ended", func() bool {
		if n, err := st.QueueLen(ctx); err != nil || n != 0 {
			return false
		}
		open, _, err := st.List(ctx, broker.ListOptions{States: []broker.State{broker.StateQueued, broker.StateLoading, broker.StateWorking, broker.StateRetrying}, Limit: 1})
		return err == nil && len(open) == 0 && s.b.Fake.InFlight() == 0
	})
	s.mu.Lock()
	jobs := append([]string(nil), s.jobs...)
	s.mu.Unlock()
	for _, id := range jobs {
		waitRecord(s.t, ctx, st, id, func(j *broker.Job) bool { return j.State.Terminal() })
	}
	s.closeIdle()
}

func (s *soaker) closeIdle() {
	s.tr.CloseIdleConnections()
	if c, ok := s.b.Target.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// steadyGoroutines polls the goroutine count, closing idle connections meanwhile, until it
// stayed the same for steadyTicks polls in a row, and returns it: the count of a settled
// foreman, its winding-down goroutines ended.
func (s *soaker) steadyGoroutines(what string) int {
	s.t.Helper()
	const steadyTicks = 25
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last, same := -1, 0
	for {
		got := runtime.NumGoroutine()
		if got == last {
			same++
		} else {
			last, same = got, 0
		}
		if same >= steadyTicks {
			return got
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: the goroutine count never held still (last %d)", what, got)
		}
		<-tick.C
		s.closeIdle()
	}
}

// settledGoroutines polls the goroutine count until it is at most limit, closing idle
// connections meanwhile; past the deadline it fails with every goroutine's stack.
func (s *soaker) settledGoroutines(what string, limit int) int {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := runtime.NumGoroutine()
		if got <= limit {
			return got
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			s.t.Fatalf("%s: %d goroutines, want at most %d; the goroutines:\n%s", what, got, limit, buf.String())
		}
		<-tick.C
		s.closeIdle()
	}
}

// requestTables are the sizes of the gateway's tables that hold an entry per request or
// per program while a request runs, and of the subscriptions on foreman's NATS
// connection and server: all of them are back to what they were once every call ended.
func (s *soaker) requestTables() map[string]int {
	gw := s.b.GW
	out := map[string]int{}
	gw.programLocks.mu.Lock()
	out["program locks"] = len(gw.programLocks.locks)
	gw.programLocks.mu.Unlock()
	gw.bodies.mu.Lock()
	out["body holds"] = len(gw.bodies.held)
	gw.bodies.mu.Unlock()
	out["body bytes"] = int(gw.bodies.used.Load())
	gw.artifactReads.mu.Lock()
	out["artifact places"] = len(gw.artifactReads.held) + gw.artifactReads.used
	gw.artifactReads.mu.Unlock()
	gw.caps.mu.Lock()
	out["capability re-reads"] = len(gw.caps.rereads)
	gw.caps.mu.Unlock()
	out["subscriptions (connection)"] = s.b.Broker.Conn.NumSubscriptions()
	return out
}

// sameTables waits until the request tables are as they were (want).
func (s *soaker) sameTables(what string, want map[string]int) {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got := s.requestTables()
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: %v, were %v", what, got, want)
		}
		<-tick.C
	}
}

// TestSoakLeavesNoGoroutines drives a foreman with a few hundred calls of every kind —
// sync chat and generate streamed and not, OpenAI completions, callers that hang up while
// queued, mid-stream or mid-upload, or stall their upload, /jobs with their reads,
// artifacts and cancels, NATS submits followed on their state subjects, refusals, a
// target that fails, hangs or is down — and checks that once everything ended the process holds no more goroutines
// (within goroutineSlack) after a second round, which drives every call soakPasses times,
// than after the first, nor NATS subscriptions or entries in the gateway's per-request
// tables (requestTables): nothing a caller does leaves one behind. It counts the whole
// process's goroutines, so it does not run in parallel with other tests.
func TestSoakLeavesNoGoroutines(t *testing.T) {
	gate := newTokenGate()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithBeforeToken(gate.before)),
		withGateway(func(c *Config) {
			c.MaxQueuePerProgram = 100 // the programs' locks too
			c.BodyReadTimeout = 200 * time.Millisecond
		}))
	b.GW.cfg.Queue = b.Worker
	runUntilCleanup(t, "metrics", b.GW.RunMetrics)
	runUntilCleanup(t, "nats submit", b.GW.RunNATSSubmit)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	s := &soaker{t: t, b: b, gate: gate, hc: &http.Client{Transport: tr}, tr: tr}
	t.Cleanup(gate.release)
	ctx := testCtx(t, 2*time.Minute)

	s.settle(ctx)
	start := runtime.NumGoroutine()
	s.round(ctx, 1)
	if t.Failed() {
		t.FailNow()
	}
	s.settle(ctx)
	// The first round starts what runs once (connection pools, the worker's parts, a
	// consumer per queue): its settled count is the base of the second.
	first := s.steadyGoroutines("after round 1")
	tables := s.requestTables()
	calls := s.calls.Load()
	for pass := range soakPasses {
		s.round(ctx, 2+pass)
		if t.Failed() {
			t.FailNow()
		}
	}
	s.settle(ctx)
	second := s.settledGoroutines("after round 2", first+goroutineSlack)
	s.sameTables("the request tables after round 2", tables)
	t.Logf("%d calls in round 1, %d in round 2: goroutines %d before, %d after round 1, %d after round 2; tables %v",
		calls, s.calls.Load()-calls, start, first, second, tables)
}
