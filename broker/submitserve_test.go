package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

func TestInboxReply(t *testing.T) {
	for reply, want := range map[string]bool{
		"_INBOX.abc":                        true,
		"_INBOX.abc.def":                    true,
		"_R_.aBc123.XyZ":                    true,
		"_INBOX.":                           false,
		"_INBOX":                            false,
		"_INBOX.a..b":                       false,
		"_INBOX.*":                          false,
		"_INBOX.>":                          false,
		"_INBOX.a b":                        false,
		"_R_.":                              false,
		"$KV.FOREMAN_JOBS.job.01":           false,
		"foreman.queue.abc":                 false,
		"_inbox.abc":                        false,
		"_GR_.abcdef.ghijkl._INBOX.x":       true,
		"_GR_.abcdef.ghijkl._R_.aBc123.XyZ": true,
		"_GR_.abcdef.ghijkl.$KV.FOREMAN_JOBS.job": false,
		"_GR_.abc.ghijkl._INBOX.x":                false,
		"_GR_.abcdef.ghijkl":                      false,
	} {
		if got := broker.InboxReply(reply); got != want {
			t.Errorf("inboxReply(%q) = %v, want %v", reply, got, want)
		}
	}
}

// Refused submits are logged once per interval, the next line telling how many were held
// back: any client can send a flood of them.
func TestRefusalLogLimit(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := broker.LogLimitAllow(10*time.Second, t0, t0.Add(time.Second), t0.Add(9*time.Second), t0.Add(10*time.Second), t0.Add(11*time.Second), t0.Add(30*time.Second))
	want := []int{0, -1, -1, 2, -1, 1}
	if !slices.Equal(got, want) {
		t.Fatalf("allow = %v, want %v", got, want)
	}
}

// A reply too large for a NATS message (an error that quotes the request at length) is
// replaced by a short error with the same status. Without that the client gets no reply at
// all, only its timeout, and foreman logs a warning for every such request: this too goes
// through the log limit.
func TestSubmitReplyTooLargeGetsAShortError(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	huge := strings.Repeat("x", int(b.Conn.MaxPayload()))
	var logs bytes.Buffer // read once ServeSubmit has returned: every answer is written then
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Store.ServeSubmit(ctx, broker.SubmitServer{
			Answer: func(context.Context, broker.SubmitRequest) broker.SubmitReply {
				return broker.SubmitReply{Error: huge, Status: 400}
			},
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
	}()
	stop := sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() { _ = stop() })

	reqCtx, cancelReq := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelReq()
	for answered := 0; answered < 3; {
		m, err := b.Conn.RequestWithContext(reqCtx, broker.SubmitSubject, []byte(`{}`))
		if errors.Is(err, nats.ErrNoResponders) {
			continue // the server is still subscribing
		}
		if err != nil {
			t.Fatalf("submit %d: no reply: %v", answered, err)
		}
		answered++
		var r broker.SubmitReply
		if err := json.Unmarshal(m.Data, &r); err != nil || r.Status != 400 || r.Error == "" || r.JobID != "" || len(m.Data) > 200 {
			t.Fatalf("submit %d: reply %.300s (%v), want a short error with status 400", answered, m.Data, err)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("ServeSubmit: %v", err)
	}
	if n := strings.Count(logs.String(), "nats submit reply too large"); n != 1 {
		t.Fatalf("%d warnings for 3 replies too large, want 1 (the log limit holds the rest): %s", n, logs.String())
	}
}

// A flood of submits from one client, faster than foreman answers them, gets a 503 with
// retry_after for what foreman cannot hold, and every submit an answer: nats.go used to
// hold the flood in the subscription's pending buffer while the answers were slow, and
// once that was full (64 MB: 64 submits of 1 MB) dropped every further request, anyone's,
// with no reply and no job, so their senders waited out their timeouts.
func TestSubmitFloodIsAnsweredBusy(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Store.ServeSubmit(ctx, broker.SubmitServer{
			Answer: func(_ context.Context, req broker.SubmitRequest) broker.SubmitReply {
				if len(req.Data) > 2 {
					<-release // a slow store: every answer to the flood waits
				}
				return broker.SubmitReply{JobID: "j"}
			},
			RetryAfter: 7,
		})
	}()
	stop := sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }); _ = stop() })

	flooder, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer flooder.Close()
	inbox := nats.NewInbox()
	replies, err := flooder.SubscribeSync(inbox + ".*")
	if err != nil {
		t.Fatal(err)
	}
	if err := replies.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	for { // the server is still subscribing until a request finds it
		_, err := flooder.Request(broker.SubmitSubject, []byte(`{}`), 10*time.Second)
		if errors.Is(err, nats.ErrNoResponders) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	const n = 120
	body := bytes.Repeat([]byte("x"), int(b.Conn.MaxPayload())-1024)
	for i := range n {
		if err := flooder.PublishRequest(broker.SubmitSubject, inbox+"."+strconv.Itoa(i), body); err != nil {
			t.Fatal(err)
		}
	}
	if err := flooder.Flush(); err != nil {
		t.Fatal(err)
	}
	reqCtx, cancelReq := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelReq()
	busy, jobs := 0, 0
	read := func() {
		t.Helper()
		m, err := replies.NextMsgWithContext(reqCtx)
		if err != nil {
			t.Fatalf("%d busy replies and %d jobs of %d submits, then: %v", busy, jobs, n, err)
		}
		var r broker.SubmitReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatalf("reply %.200s: %v", m.Data, err)
		}
		switch {
		case r.JobID != "":
			jobs++
		case r.Status == 503 && r.RetryAfter == 7 && strings.Contains(r.Error, "retry"):
			busy++
		default:
			t.Fatalf("reply %.200s, want a job or a 503 with retry_after 7", m.Data)
		}
	}
	read() // while every answer waits, only a busy reply can come
	if busy != 1 {
		t.Fatalf("first reply is no 503")
	}
	releaseOnce.Do(func() { close(release) })
	for busy+jobs < n {
		read()
	}
	if jobs < 16 {
		t.Fatalf("%d jobs, %d busy replies: the submits answered at once are not held", jobs, busy)
	}
}
