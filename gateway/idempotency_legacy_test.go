package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// legacyClaimKey is the jobs bucket key a foreman from before keys were per program
// (d87989e) claimed an Idempotency-Key under: the digest of the key alone.
func legacyClaimKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "idem." + hex.EncodeToString(sum[:])
}

// writeLegacyClaim stores what such a foreman left of a chat submit under key with body:
// its claim, in the shape it wrote (job_id, body_sha256, until: the submit's deadline),
// and, when queued, the job's record and queue message. It returns the job's id.
func writeLegacyClaim(t *testing.T, ctx context.Context, b *testBundle, key, body string, until time.Time, queued bool) string {
	t.Helper()
	return writeLegacyClaimOf(t, ctx, b, "", key, body, until, queued)
}

// writeLegacyClaimOf is writeLegacyClaim of a request of program (named by its token or
// header: the body is the same).
func writeLegacyClaimOf(t *testing.T, ctx context.Context, b *testBundle, program, key, body string, until time.Time, queued bool) string {
	t.Helper()
	id := broker.NewID()
	sum := sha256.Sum256([]byte("chat\n" + body))
	claim := fmt.Sprintf(`{"job_id":%q,"body_sha256":%q,"until":%q}`, id, hex.EncodeToString(sum[:]), until.UTC().Format(time.RFC3339Nano))
	if _, err := b.Broker.JobRecords(t).Create(ctx, legacyClaimKey(key), []byte(claim)); err != nil {
		t.Fatal(err)
	}
	if queued {
		if _, err := b.Broker.Store.Submit(ctx, &broker.Job{ID: id, Model: "tiny-a", Kind: broker.KindChat, Program: program}, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// postKeyed sends a POST /jobs with body under key and returns its status, job id and
// whether it was replayed.
func postKeyed(t *testing.T, b *testBundle, key, body string) (int, string, bool) {
	t.Helper()
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", key)
	var s submitted
	_ = json.Unmarshal(out, &s)
	return resp.StatusCode, s.JobID, resp.Header.Get("Idempotent-Replayed") == "true"
}

func queueLen(t *testing.T, ctx context.Context, b *testBundle) uint64 {
	t.Helper()
	n, err := b.Broker.Store.QueueLen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A client's retry across an upgrade from a foreman before keys were per program (or,
// on a shared NATS, through an upgraded foreman after a first try through an old one)
// gets the job its first try made, and another body under the key is refused, as before
// the upgrade (ADR-0062). The claim was stored under the key alone, and the upgraded
// foreman looked only under program+"\n"+key: the retry made a second job, both ran.
func TestIdempotencyKeyClaimedBeforeProgramsIsReplayed(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	id := writeLegacyClaim(t, ctx, b, "before-upgrade", body, time.Now().Add(10*time.Second), true)

	status, got, replayed := postKeyed(t, b, "before-upgrade", body)
	if status != http.StatusAccepted || got != id || !replayed {
		t.Fatalf("retry after the upgrade: %d job %q replayed %v, want job %s replayed", status, got, replayed, id)
	}
	if n := queueLen(t, ctx, b); n != 1 {
		t.Fatalf("%d jobs queued, want 1", n)
	}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(`{"model":"tiny-b","messages":[]}`), "Idempotency-Key", "before-upgrade")
	wantJobError(t, "the key with another body", resp, out, http.StatusUnprocessableEntity)

	// A program's key was never its own before: an old claim under it is not its claim.
	status, got, replayed = postKeyed(t, b, "before-upgrade", `{"model":"tiny-a","program":"batch","messages":[{"role":"user","content":"hi"}]}`)
	if status != http.StatusAccepted || got == id || replayed {
		t.Fatalf("the key with a program: %d job %q replayed %v, want a job of its own", status, got, replayed)
	}
	if _, err := b.Broker.JobRecords(t).Get(ctx, legacyClaimKey("before-upgrade")); err != nil {
		t.Fatalf("the old claim after its replays: %v, want it kept", err)
	}
}

// An old foreman's claim whose request died before its job was stored (its deadline
// passed, no record) is taken over as this foreman's own are: the retry makes the job,
// under the key of now, and a retry after gets that job.
func TestIdempotencyKeyClaimedBeforeProgramsOrphanedIsTakenOver(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[]}`
	ghost := writeLegacyClaim(t, ctx, b, "died", body, time.Now().Add(-claimGrace-time.Second), false)

	status, id, replayed := postKeyed(t, b, "died", body)
	if status != http.StatusAccepted || id == "" || id == ghost || replayed {
		t.Fatalf("retry of a request that died: %d job %q replayed %v, want a new job", status, id, replayed)
	}
	if _, err := b.Broker.JobRecords(t).Get(ctx, legacyClaimKey("died")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the orphaned old claim after the take-over: %v, want it released", err)
	}
	status, again, replayed := postKeyed(t, b, "died", body)
	if status != http.StatusAccepted || again != id || !replayed {
		t.Fatalf("the next retry: %d job %q replayed %v, want job %s replayed", status, again, replayed, id)
	}
	if n := queueLen(t, ctx, b); n != 1 {
		t.Fatalf("%d jobs queued, want 1", n)
	}
}

// On a store of its own a foreman looks for old claims only during the first job TTL
// after it opened it: every claim an old foreman made is older and has aged out since.
// Within it a retry is replayed; past it the old form is not read (a claim found under
// it then is one the test wrote, which no store of a foreman's own could still hold).
// On a shared NATS, where an old foreman may be running on, it is read however long
// this one has run.
func TestIdempotencyKeyClaimedBeforeProgramsIsLookedForWhileItCanLive(t *testing.T) {
	t.Parallel()
	const ttl = time.Hour
	body := `{"model":"tiny-a","messages":[]}`
	for _, exclusive := range []bool{true, false} {
		t.Run(fmt.Sprintf("exclusive=%v", exclusive), func(t *testing.T) {
			t.Parallel()
			var ahead atomic.Int64 // how far the store's clock is moved on
			b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) {
				c.Exclusive, c.JobTTL = exclusive, ttl
				c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
			})))
			ctx := testCtx(t, 30*time.Second)
			within := writeLegacyClaim(t, ctx, b, "within", body, time.Now().Add(10*time.Second), true)
			if status, got, replayed := postKeyed(t, b, "within", body); status != http.StatusAccepted || got != within || !replayed {
				t.Fatalf("retry within a TTL of the start: %d job %q replayed %v, want job %s replayed", status, got, replayed, within)
			}

			ahead.Store(int64(ttl + time.Minute))
			past := writeLegacyClaim(t, ctx, b, "past", body, time.Now().Add(10*time.Second), true)
			status, got, replayed := postKeyed(t, b, "past", body)
			if exclusive {
				if status != http.StatusAccepted || got == "" || got == past || replayed {
					t.Fatalf("a TTL after the start: %d job %q replayed %v, want a job of its own (the old form not read)", status, got, replayed)
				}
				return
			}
			if status != http.StatusAccepted || got != past || !replayed {
				t.Fatalf("shared NATS, a TTL after the start: %d job %q replayed %v, want job %s replayed", status, got, replayed, past)
			}
		})
	}
}

// An old foreman put every program's keys in one namespace: its claim of a program's
// request (the program named by a token or header, the body the same) is not the claim
// of a request without a program, which gets a job of its own, not the program's.
func TestIdempotencyKeyClaimedBeforeProgramsByAProgramIsNotAnothers(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	theirs := writeLegacyClaimOf(t, ctx, b, "batch", "shared-key", body, time.Now().Add(10*time.Second), true)

	status, got, replayed := postKeyed(t, b, "shared-key", body)
	if status != http.StatusAccepted || got == theirs || replayed {
		t.Fatalf("a request without a program: %d job %q replayed %v, want a job of its own (not %s)", status, got, replayed, theirs)
	}
	if status, again, replayed := postKeyed(t, b, "shared-key", body); status != http.StatusAccepted || again != got || !replayed {
		t.Fatalf("its retry: %d job %q replayed %v, want its job %s", status, again, replayed, got)
	}
	if n := queueLen(t, ctx, b); n != 2 {
		t.Fatalf("%d jobs queued, want 2: the program's and this request's", n)
	}
}

// Foremen from before keys were per program had programs (X-Foreman-Program, named
// tokens): a program's retry across the upgrade gets the job its first try made, found
// under the old key by its record's program (ADR-0080). Before, a request with a program
// never read the old key: the retry made a second job, and both ran. Another program's
// request with the key, or the program's with another body (which the old foreman
// refused; a program's key is its own now), gets a job of its own.
func TestIdempotencyKeyClaimedBeforeProgramsByAProgramIsReplayedToIt(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	id := writeLegacyClaimOf(t, ctx, b, "batch", "program-key", body, time.Now().Add(10*time.Second), true)

	post := func(program, body string) (int, string, bool) {
		t.Helper()
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", "program-key", "X-Foreman-Program", program)
		var s submitted
		_ = json.Unmarshal(out, &s)
		return resp.StatusCode, s.JobID, resp.Header.Get("Idempotent-Replayed") == "true"
	}
	if status, got, replayed := post("batch", body); status != http.StatusAccepted || got != id || !replayed {
		t.Fatalf("the program's retry after the upgrade: %d job %q replayed %v, want job %s replayed", status, got, replayed, id)
	}
	if n := queueLen(t, ctx, b); n != 1 {
		t.Fatalf("%d jobs queued, want 1", n)
	}
	if status, got, replayed := post("other", body); status != http.StatusAccepted || got == id || replayed {
		t.Fatalf("another program's request: %d job %q replayed %v, want a job of its own", status, got, replayed)
	}
	if status, got, replayed := post("batch", `{"model":"tiny-b","messages":[]}`); status != http.StatusAccepted || got == id || replayed {
		t.Fatalf("the program's request with another body: %d job %q replayed %v, want a job of its own", status, got, replayed)
	}
	if n := queueLen(t, ctx, b); n != 3 {
		t.Fatalf("%d jobs queued, want 3", n)
	}
}
