package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// soakSlack is how many goroutines a settled process may have beyond the count it settled
// at before: a timer's or a connection's goroutine caught as it ends.
const soakSlack = 2

// errLeft is what a caller that leaves a stream in its middle returns from its chunk
// function.
var errLeft = errors.New("the caller left")

// soakPasses is how many times the second round drives every call: a call that leaves one
// goroutine behind leaves more than soakSlack.
const soakPasses = 3

// clientSoak drives one foreman with clients of each mode.
type clientSoak struct {
	t       *testing.T
	f       *foreman
	clients map[string]*client.Client
}

// round: per client, Submits waited for, Submits whose caller leaves while their job
// waits, Chat and Generate streamed and not, a Chat left mid-stream, SubmitAsync with
// Wait, Watch and Cancel, and Watch("") left.
func (s *clientSoak) round(ctx context.Context, r int) {
	for name, c := range s.clients {
		s.done(ctx, name, c, r)
		s.left(ctx, name, c, r)
		s.watched(ctx, name, c, r)
	}
}

// done: calls that get their answer.
func (s *clientSoak) done(ctx context.Context, name string, c *client.Client, r int) {
	no := false
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			prompt := fmt.Sprintf("%s %d.%d", name, r, i)
			var err error
			switch i % 3 {
			case 0:
				_, err = c.Submit(ctx, chatJob([]string{"tiny-a", "tiny-b"}[i%2], prompt))
			case 1:
				_, err = c.Chat(ctx, client.ChatRequest{Model: "tiny-b", Messages: []client.Message{{Role: "user", Content: prompt}}}, nil)
			case 2:
				_, err = c.Generate(ctx, client.GenerateRequest{Model: "tiny-a", Prompt: prompt, Stream: &no}, nil)
			}
			if err != nil {
				s.t.Errorf("%s call %d: %v", name, i, err)
			}
		})
	}
	wg.Wait()
}

// left: callers that leave while their job waits behind one the target holds, and one
// that leaves a chat in the middle of its stream.
func (s *clientSoak) left(ctx context.Context, name string, c *client.Client, r int) {
	release := s.f.Fake.Hold("tiny-a")
	defer release()
	blocker, err := c.SubmitAsync(ctx, chatJob("tiny-a", fmt.Sprintf("%s blocker %d", name, r)))
	if err != nil {
		s.t.Fatal(err)
	}
	// The blocker runs (the target holds it): the jobs below wait behind it.
	if err := s.f.Fake.WaitInFlight(ctx, 1); err != nil {
		s.t.Fatal(err)
	}
	callCtx, leave := context.WithCancel(ctx)
	defer leave()
	const n = 4
	queued := make(chan struct{}, n) // each Submit's first state: its job is there
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := chatJob("tiny-b", fmt.Sprintf("%s left %d.%d", name, r, i))
			var once sync.Once
			req.OnState = func(client.Event) { once.Do(func() { queued <- struct{}{} }) }
			if _, err := c.Submit(callCtx, req); !errors.Is(err, context.Canceled) {
				s.t.Errorf("%s: a Submit left while queued: %v", name, err)
			}
			once.Do(func() { queued <- struct{}{} }) // one that failed before any state
		})
	}
	for range n {
		select {
		case <-queued:
		case <-ctx.Done():
			s.t.Fatalf("%s: the Submits never saw their jobs: %v", name, ctx.Err())
		}
	}
	// A chat whose caller leaves as its first chunk comes.
	wg.Go(func() {
		chatCtx, leaveChat := context.WithCancel(ctx)
		defer leaveChat()
		_, err := c.Chat(chatCtx, client.ChatRequest{Model: "tiny-b", Messages: []client.Message{{Role: "user", Content: fmt.Sprintf("%s chat left %d", name, r)}}},
			func(*client.ChatResponse) error { leaveChat(); return errLeft })
		if err == nil {
			s.t.Errorf("%s: a chat left mid-stream ended well", name)
		}
	})
	leave()
	release()
	wg.Wait()
	if _, err := c.Wait(ctx, blocker); err != nil {
		s.t.Errorf("%s: the blocker: %v", name, err)
	}
}

// watched: SubmitAsync with Watch read to its close, Wait, Cancel, and a Watch("") left.
func (s *clientSoak) watched(ctx context.Context, name string, c *client.Client, r int) {
	id, err := c.SubmitAsync(ctx, chatJob("tiny-a", fmt.Sprintf("%s watched %d", name, r)))
	if err != nil {
		s.t.Fatal(err)
	}
	events, err := c.Watch(ctx, id)
	if err != nil {
		s.t.Fatal(err)
	}
	for range events {
	}
	if _, err := c.Wait(ctx, id); err != nil {
		s.t.Errorf("%s: Wait: %v", name, err)
	}
	allCtx, leaveAll := context.WithCancel(ctx)
	all, err := c.Watch(allCtx, "")
	if err != nil {
		s.t.Fatal(err)
	}
	release := s.f.Fake.Hold("tiny-b")
	defer release()
	held, err := c.SubmitAsync(ctx, chatJob("tiny-b", fmt.Sprintf("%s canceled %d", name, r)))
	if err != nil {
		s.t.Fatal(err)
	}
	waitCtx, leaveWait := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		_, err := c.Wait(waitCtx, held)
		waited <- err
	}()
	if _, err := c.Cancel(ctx, held); err != nil {
		s.t.Errorf("%s: Cancel: %v", name, err)
	}
	if err := <-waited; !errors.Is(err, client.ErrJobFailed) {
		s.t.Errorf("%s: Wait for a canceled job: %v", name, err)
	}
	leaveWait()
	// Watch("") is left with its events unread.
	leaveAll()
	for range all {
	}
}

// settle waits until the queue is empty and no job runs.
func (s *clientSoak) settle(ctx context.Context) {
	s.t.Helper()
	open := []broker.State{broker.StateQueued, broker.StateLoading, broker.StateWorking, broker.StateRetrying}
	for {
		n, err := s.f.Store.QueueLen(ctx)
		jobs, _, lerr := s.f.Store.List(ctx, broker.ListOptions{States: open, Limit: 1})
		if err == nil && lerr == nil && n == 0 && len(jobs) == 0 && s.f.Fake.InFlight() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("the queue never emptied: %v", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// steady polls the goroutine count until it held still for 25 polls in a row.
func steady(t *testing.T, what string) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last, same := -1, 0
	for {
		closeIdle()
		got := runtime.NumGoroutine()
		if got == last {
			same++
		} else {
			last, same = got, 0
		}
		if same >= 25 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the goroutine count never held still (last %d)", what, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// closeIdle closes the clients' idle keep-alive connections to foreman (they use Go's
// default transport): a pool of one connection more after a round than after the one
// before is three goroutines (its read and write loops, foreman's side), past soakSlack,
// and no leak (CI: 183 against 182).
func closeIdle() { http.DefaultTransport.(*http.Transport).CloseIdleConnections() }

// atMost polls the goroutine count until it is at most limit; past the deadline it fails
// with every goroutine's stack.
func atMost(t *testing.T, what string, limit int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		closeIdle()
		got := runtime.NumGoroutine()
		if got <= limit {
			return got
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Fatalf("%s: %d goroutines, want at most %d; the goroutines:\n%s", what, got, limit, buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSoakClientLeavesNoGoroutines uses one client of each mode (NATS, webhook receivers,
// polling) for many calls, some of whose callers leave — Submits waiting in the queue, a
// chat mid-stream, Waits and Watches — and checks that once the calls ended the process
// holds no more goroutines (within soakSlack) after a second round, which drives every
// call soakPasses times, than after the first. It counts the whole process's goroutines,
// so it does not run in parallel with other tests.
func TestSoakClientLeavesNoGoroutines(t *testing.T) {
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	s := &clientSoak{t: t, f: f, clients: map[string]*client.Client{
		"nats":    newClient(t, f.URL, client.WithNATS(natsConn(t, f)), client.WithPollInterval(50*time.Millisecond)),
		"webhook": newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(50*time.Millisecond)),
		"polling": newClient(t, f.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond), client.WithCancelOnContextDone()),
	}}
	// foreman's idle connections to the webhook receiver close after a second, its side
	// of them as the pool above (foreman keeps them 90 s, a receiver 2 min by default).
	client.SetWebhookReceiverBounds(s.clients["webhook"], 0, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s.round(ctx, 1)
	if t.Failed() {
		t.FailNow()
	}
	s.settle(ctx)
	first := steady(t, "after round 1")
	for pass := range soakPasses {
		s.round(ctx, 2+pass)
		if t.Failed() {
			t.FailNow()
		}
	}
	s.settle(ctx)
	second := atMost(t, "after round 2", first+soakSlack)
	t.Logf("goroutines: %d after round 1, %d after round 2", first, second)
}
