package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A streamed call on foreman C whose job runs on foreman A, on another node of a NATS
// cluster, loses frames mid-answer: the route between the two nodes goes down after the
// first three frames reached the caller and comes back three frames later, as when a
// node restarts or a connection moves. The frames A published meanwhile were dropped by
// its node. Once the caller's subscription crossed the route again, the next frame shows
// the gap; the caller's feed asks A for the lost ones (ADR-0078), and the caller gets the
// whole answer, byte for byte what the target sent. Before, the answer ended with
// "stream gap: expected frame 4, got 7".
func TestSyncCrossNodeFramesLostMidAnswerAreSentAgain(t *testing.T) {
	lostMidAnswer(t, true)
}

// As above, but the route comes back only after A sent the rest of the answer: those
// frames are dropped too, the final marker with them, and the caller sees only the job's
// end (its state comes from the jobs stream's leader, on a
// third node). It asks A for the rest of the answer (Mend) and gets it whole. Before,
// the answer ended with "stream gap: the job finished but its final frame never arrived".
func TestSyncCrossNodeAnswersEndLostIsSentAgain(t *testing.T) {
	lostMidAnswer(t, false)
}

// lostMidAnswer runs a cross-node streamed call whose frames 4 to 6 are dropped; later:
// the frames after them reach the caller.
func lostMidAnswer(t *testing.T, later bool) {
	if testing.Short() {
		t.Skip("3-node NATS cluster; skipped with -short")
	}
	const caller, runner, leader = 0, 1, 2
	cl := brokertest.NewCluster(t, 3)
	stC := cl.OpenOn(t, caller, nil)
	stA := cl.OpenOn(t, runner, nil)
	gwC := startClusterGateway(t, stC)

	// The target stops before tokens 3 and 6 of a reply while the test holds it there.
	// at[i] tells the first reply that got there; a reply asked again (an attempt that
	// broke off before its frames were published is run again) stops there too, and
	// what the caller gets is still checked against what the target sent.
	gated := make(chan struct{})
	at := map[int]chan struct{}{3: make(chan struct{}), 6: make(chan struct{})}
	reached := map[int]*sync.Once{3: new(sync.Once), 6: new(sync.Once)}
	resume := map[int]chan struct{}{3: make(chan struct{}), 6: make(chan struct{})}
	fakeA := ollamatest.New(t, ollamatest.WithTokens(10), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		select {
		case <-gated:
		default:
			return nil // not yet: the warm-up call
		}
		if at[i] == nil {
			return nil
		}
		reached[i].Do(func() { close(at[i]) })
		select {
		case <-resume[i]:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	sent := recordAnswers(t, fakeA.URL)
	startClusterWorker(t, stA, sent.URL)

	body := chatBody("tiny-a", "tell me", "true")
	// A first call makes the queue's consumer, whose leader moves with the others.
	if r := post(t, testCtx(t, time.Minute), gwC, "/api/chat", body); r.Status != http.StatusOK {
		t.Fatalf("first call: %d %s", r.Status, r.Body)
	}
	cl.LeadTo(t, leader)
	// The call under test has its time from here: LeadTo's elections, one per stream and
	// consumer, take tens of seconds under load.
	ctx := testCtx(t, 2*time.Minute)

	// What A's node carries of the answer: the frames published there.
	onA, err := nats.Connect(cl.URL(runner))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(onA.Close)
	published, err := onA.SubscribeSync("foreman.job.*.stream")
	if err != nil {
		t.Fatal(err)
	}
	if err := onA.Flush(); err != nil {
		t.Fatal(err)
	}

	close(gated)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gwC+"/api/chat", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	// The caller reads the answer as it comes: the first three frames before the cut.
	lines := bufio.NewReader(resp.Body)
	var answer bytes.Buffer
	for range 3 {
		line, err := lines.ReadBytes('\n')
		if err != nil {
			t.Fatalf("the first frames: %v (%q)", err, answer.Bytes())
		}
		answer.Write(line)
	}
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waited for %s: %v", what, ctx.Err())
		}
	}
	wait(at[3], "token 3")
	cl.CutRoute(caller, runner)
	healed := false
	t.Cleanup(func() {
		if !healed {
			cl.HealRoute(caller, runner)
		}
	})
	close(resume[3])
	wait(at[6], "token 6")
	// Frames 4 to 6 (tokens 3 to 5) went out on A's node while the route was down.
	var id string
	for {
		m, err := published.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatalf("frame 6 never published on A's node: %v", err)
		}
		if m.Header.Get(broker.HeaderSeq) == "6" {
			id = strings.TrimSuffix(strings.TrimPrefix(m.Subject, "foreman.job."), ".stream")
			break
		}
	}
	if later {
		cl.HealRoute(caller, runner)
		healed = true
		// The caller's feed answers A's ping: its subscription crossed the route again,
		// and the frames from 7 on reach it.
		eventually(t, 30*time.Second, "the caller's feed heard from A's node", func() bool {
			m := nats.NewMsg(broker.PingSubject(id))
			m.Header.Set(broker.HeaderGateway, stC.BootID())
			_, err := onA.RequestMsg(m, 200*time.Millisecond)
			return err == nil
		})
		close(resume[6])
	} else {
		// The rest of the answer and its final marker go out while the route is down.
		close(resume[6])
		for {
			m, err := published.NextMsgWithContext(ctx)
			if err != nil {
				t.Fatalf("the final marker never published on A's node: %v", err)
			}
			if m.Header.Get(broker.HeaderFinal) != "" {
				break
			}
		}
		cl.HealRoute(caller, runner)
		healed = true
	}
	rest, err := io.ReadAll(lines)
	if err != nil {
		t.Fatalf("the rest of the answer: %v", err)
	}
	answer.Write(rest)
	eventually(t, 10*time.Second, "the recorded answer", func() bool { return len(sent.answers("/api/chat")) >= 2 })
	want := sent.answers("/api/chat")[1]
	if !bytes.Equal(answer.Bytes(), want.body) {
		t.Fatalf("answer:\n%s\nwant the target's %d bytes:\n%s", answer.Bytes(), len(want.body), want.body)
	}
}
