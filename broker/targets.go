package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// TargetsBucket holds one key per foreman's Ollama target (its name): what the target has
// and has loaded, so every foreman on a shared NATS knows the models of all of them. An
// entry not refreshed within its TTL goes away by itself with its foreman. Its age is
// taken on the NATS server's clock, which stamps each write, so a foreman's clock that is
// off hides or keeps no entry (ADR-0056).
const TargetsBucket = "FOREMAN_TARGETS"

// defaultTargetTTL is how long a target's entry lives after its last refresh.
const defaultTargetTTL = 90 * time.Second

// targetsMaxAge is how long Targets serves its last read before it reads the bucket again.
const targetsMaxAge = time.Second

// clockOffWarn is how far this foreman's clock may be from the NATS server's, as its own
// entry tells (written at Updated, stamped at Created), before it says so: a publish
// takes milliseconds, and no longer than its 5 s bound.
const clockOffWarn = 5 * time.Second

// Target is one foreman's view of its Ollama target, as published to TargetsBucket.
type Target struct {
	Name string `json:"name"`
	// URL is the target's address without credentials.
	URL       string `json:"url"`
	Reachable bool   `json:"reachable"`
	// DownSince is when the target stopped answering its foreman's polls (refused,
	// reset, unanswered: ollama.Snapshot.DownSince), by that foreman's clock; zero while
	// it answers, and when not known (a foreman that has not polled yet, or an earlier
	// version).
	DownSince time.Time `json:"down_since,omitzero"`
	// Models and Loaded are normalized model names (/api/tags, /api/ps).
	Models []string `json:"models"`
	Loaded []string `json:"loaded"`
	// Tags and Ps are the target's /api/tags and /api/ps bodies, for the union lists.
	Tags   json.RawMessage `json:"tags,omitempty"`
	Ps     json.RawMessage `json:"ps,omitempty"`
	BootID string          `json:"boot_id"`
	// Addrs are the publishing foreman's machine addresses, published when URL's host is
	// a loopback one: the others' webhook policy protects the target's port on them.
	Addrs   []string  `json:"addrs,omitempty"`
	Updated time.Time `json:"updated"`
	// Expires is Updated plus its own foreman's TargetTTL, both by that foreman's clock:
	// the entry counts for that long after the NATS server stored it (lifetime). Entries
	// of earlier versions lack it; the reader's TTL serves.
	Expires time.Time `json:"expires,omitzero"`
	// Stored is when the NATS server stored the entry (its Created), on the server's
	// clock: the entry's age is Store.ServerNow less it. Set by Targets, never written.
	Stored time.Time `json:"-"`
}

// lifetime is how long t counts after it was written: Expires less Updated, a span on
// one clock, which that clock's offset does not change; ttl for an entry without it.
func (t Target) lifetime(ttl time.Duration) time.Duration {
	if life := t.Expires.Sub(t.Updated); !t.Expires.IsZero() && life > 0 {
		return life
	}
	return ttl
}

// HasModel reports whether the target lists the normalized model name.
func (t Target) HasModel(model string) bool { return slices.Contains(t.Models, model) }

// targetKey is name as a KV key: KV keys allow fewer characters than host names may hold.
func targetKey(name string) string {
	b := []byte(name)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		if !ok {
			b[i] = '_'
		}
	}
	return "target." + string(b)
}

func (s *Store) targetsKV(ctx context.Context) (jetstream.KeyValue, error) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.targets != nil {
		return s.targets, nil
	}
	// The bucket's TTL is the longest of its foremen's: each entry says how long it lives
	// (Target.lifetime), and a foreman polling more often than another must not cut the
	// other's entries short by setting a shorter TTL. So it is only ever raised.
	kv, err := raisedTTLBucket(ctx, s.js, jetstream.KeyValueConfig{
		Bucket:      TargetsBucket,
		Description: "foreman Ollama targets: models, loaded models, reachability, by name",
		History:     1,
		TTL:         s.cfg.TargetTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	})
	if err != nil {
		return nil, err
	}
	s.targets = kv
	return kv, nil
}

// PublishTarget writes t (stamped with this foreman's boot id and the time) under its
// name. Once this store wrote the entry, it writes it again only over its own last
// write: a write by another foreman found in between is a name conflict
// (TargetNameConflict), and is overwritten all the same.
func (s *Store) PublishTarget(ctx context.Context, t Target) error {
	kv, err := s.targetsKV(ctx)
	if err != nil {
		return err
	}
	v, err := s.stampTarget(t)
	if err != nil {
		return err
	}
	key := targetKey(t.Name)
	s.tmu.Lock()
	last := s.trev[key]
	s.tmu.Unlock()
	var rev uint64
	if last != 0 {
		rev, err = kv.Update(ctx, key, v, last)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			s.noteOverwrite(ctx, kv, key)
		}
	}
	if last == 0 || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		rev, err = kv.Put(ctx, key, v)
	}
	if err != nil {
		return fmt.Errorf("broker: publish target %s: %w", t.Name, err)
	}
	s.tmu.Lock()
	if s.trev == nil {
		s.trev = map[string]uint64{}
	}
	s.trev[key] = max(s.trev[key], rev)
	s.tmu.Unlock()
	s.dropTargetsCache() // read our own write
	return nil
}

// targetEntry is key's current entry, from the bucket stream's leader when the bucket
// may be replicated: a replica behind it may still hold an earlier write (leaderget.go).
func (s *Store) targetEntry(ctx context.Context, kv jetstream.KeyValue, key string) (jetstream.KeyValueEntry, error) {
	if s.mayBeReplicated() {
		return s.leaderGet(ctx, TargetsBucket, key)
	}
	return kv.Get(ctx, key)
}

// dropTargetsCache makes the next Targets read the bucket, and keeps a read begun before
// from caching what it read (it may predate this change).
func (s *Store) dropTargetsCache() {
	s.tmu.Lock()
	s.tcache = nil
	s.tgen++
	s.tmu.Unlock()
}

// liveTarget decodes entry e and reports whether it is live: younger than its lifetime,
// on the server's clock at both ends (serverNow, the time of the bucket's listing): no
// foreman's clock, however far off, makes an entry dead early or live late. A server
// before 2.10 does not tell its time: then the writer's expiry against this clock (now),
// which holds while the foremen's clocks agree, whatever the server's.
func (s *Store) liveTarget(e jetstream.KeyValueEntry, serverNow, now time.Time) (Target, bool) {
	var t Target
	if json.Unmarshal(e.Value(), &t) != nil {
		return t, false
	}
	t.Stored = e.Created()
	if t.BootID == s.cfg.BootID {
		s.checkClock(e.Created().Sub(t.Updated))
	}
	if serverNow.IsZero() {
		return t, now.Before(t.Updated.Add(t.lifetime(s.cfg.TargetTTL)))
	}
	return t, serverNow.Sub(e.Created()) < t.lifetime(s.cfg.TargetTTL)
}

// Targets returns the live targets, sorted by name. It reads the bucket at most once a
// second and serves that read in between: it is called on every pick and submit. Reads
// at once (a pick, a submit, a poll) may end in any order: one is cached only if no read
// begun after it was cached first, so an older list (without another foreman's entry
// published meanwhile) never replaces a newer one.
func (s *Store) Targets(ctx context.Context) ([]Target, error) {
	s.tmu.Lock()
	if s.tcache != nil && s.clock().Sub(s.tcacheAt) < targetsMaxAge {
		out := s.tcache
		s.tmu.Unlock()
		return out, nil
	}
	gen := s.tgen
	s.treads++
	read := s.treads
	s.tmu.Unlock()
	kv, err := s.targetsKV(ctx)
	if err != nil {
		return nil, err
	}
	keys, serverNow, err := s.bucketKeysAt(ctx, TargetsBucket, ">")
	if err != nil {
		return nil, fmt.Errorf("broker: list targets: %w", err)
	}
	now, readAt := s.Now(), s.clock()
	out := []Target{}
	live := map[string]bool{}
	for _, k := range keys {
		e, err := s.targetGet(ctx, kv, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("broker: read target %s: %w", k, err)
		}
		t, ok := s.liveTarget(e, serverNow, now)
		if !ok && s.mayBeReplicated() {
			// A replica behind the bucket's leader (one just back from a freeze or a
			// cut) may answer with an earlier write, past its lifetime though the
			// foreman wrote again since: the leader says whether it is dead.
			if e, err := s.leaderGet(ctx, TargetsBucket, k); err == nil {
				t, ok = s.liveTarget(e, serverNow, now)
			}
		}
		if !ok {
			continue // past its foreman's TTL (the bucket keeps the longest one), or unreadable
		}
		live[k] = true
		out = append(out, t)
	}
	if s.ownEntryLapsed(live) {
		// The bucket takes no writes (a cluster without a quorum, whose node left still
		// answers reads): every entry ages past its lifetime (or out of the bucket), this
		// foreman's own too, though its foreman runs. The others' lapse is no sign that
		// they are gone: left out, their models would be "not found" (Ollama's 404, on
		// which a client pulls the model) for as long as the outage lasts.
		return nil, fmt.Errorf("broker: list targets: %w: this foreman's own entry is past its lifetime too, "+
			"so the bucket takes no writes and the others' entries cannot tell who is gone", ErrUnavailable)
	}
	slices.SortFunc(out, func(a, b Target) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	if s.targetsRead != nil {
		s.targetsRead()
	}
	s.tmu.Lock()
	if s.tgen == gen && read > s.tcacheRead {
		s.tcache, s.tcacheAt, s.tcacheRead = out, readAt, read
	}
	s.tmu.Unlock()
	return out, nil
}

// targetGet reads target key k. On a bucket that may be replicated a try is bounded by
// attemptTimeout: a direct get that reaches a frozen replica is never answered (until
// the route to it drops, up to 15 s), and the caller, a submit with its 10 s, waited it
// out and failed. An unanswered try is asked of the leader, as is a "not found": the
// leader listed the key, and a replica without the entry (one behind it, or one that
// expired the entry's earlier write by its own clock before it caught up) would hide a
// live Mac, its models "not found" (leaderget.go). A leader that cannot be asked leaves
// an entry not found out, as before.
func (s *Store) targetGet(ctx context.Context, kv jetstream.KeyValue, k string) (jetstream.KeyValueEntry, error) {
	if !s.mayBeReplicated() {
		return kv.Get(ctx, k)
	}
	tctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	e, err := kv.Get(tctx, k)
	cancel()
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if le, lerr := s.leaderGet(ctx, TargetsBucket, k); lerr == nil {
			return le, nil
		}
	case err != nil && Transient(err) && ctx.Err() == nil:
		return s.leaderGet(ctx, TargetsBucket, k)
	}
	return e, err
}

// ownEntryLapsed reports whether this store has written target keys (not marked stopped)
// and none of them is among the live keys of a listing: its foreman's entry lapsed (or
// went) though it refreshes it after every poll, well within its lifetime, unless its
// writes fail. One live key is enough: a store may write others' entries too (tests).
func (s *Store) ownEntryLapsed(live map[string]bool) bool {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	written := false
	for k := range s.trev {
		if s.tstopped[k] {
			continue
		}
		if live[k] {
			return false
		}
		written = true
	}
	return written
}

// checkClock warns once while this foreman's clock is off from the NATS server's by more
// than clockOffWarn (off: the server's time of its own entry's write less the entry's
// Updated). The targets do not depend on it (Targets), nor any age of what the server
// stamped (ServerNow, ADR-0060), nor the job ids' times (Store.NewID); what still does:
// a webhook's webhook-timestamp, which its receiver checks.
func (s *Store) checkClock(off time.Duration) {
	s.tmu.Lock()
	was := s.clockOff
	// Told again only once well back within the bound: the offset is measured through a
	// publish's latency, and a clock near the bound would warn and clear by turns.
	far := off > clockOffWarn || off < -clockOffWarn
	if was && !far {
		far = off > clockOffWarn*3/5 || off < -clockOffWarn*3/5
	}
	s.clockOff = far
	s.tmu.Unlock()
	switch {
	case far && !was:
		way := "behind"
		if off < 0 {
			way, off = "ahead of", -off
		}
		s.log.Warn(fmt.Sprintf("this host's clock is %s the NATS server's by %s: set it right (NTP)", way, off.Round(time.Second)))
	case !far && was:
		s.log.Info("this host's clock agrees with the NATS server's again")
	}
}

// StopTarget writes t, this foreman's target as it stops in order, over its own last
// write of the entry only (one it made whose answer was lost counts: its boot id tells
// it): one another foreman wrote since (a name conflict) is left as
// it is, as is an entry this store never wrote. One that lapsed since (this foreman did
// not refresh it within its TTL: it was frozen, or cut off from NATS) is written anew,
// so that the Mac stays listed while it restarts as after any stop (ADR-0075). The entry
// then lapses as a dead foreman's does, unless the next start of this foreman writes it
// first.
func (s *Store) StopTarget(ctx context.Context, t Target) error {
	kv, err := s.targetsKV(ctx)
	if err != nil {
		return err
	}
	key := targetKey(t.Name)
	s.tmu.Lock()
	last := s.trev[key]
	if last != 0 {
		if s.tstopped == nil {
			s.tstopped = map[string]bool{}
		}
		s.tstopped[key] = true
	}
	s.tmu.Unlock()
	if last == 0 {
		// No write of the entry came back answered, but one may have landed all the
		// same (every answer lost: a store slow to answer, or the first poll's publish
		// cut off by this shutdown): then it is this foreman's entry, listed reachable.
		rev, own := s.ownTargetRevision(ctx, kv, key)
		if !own {
			return nil
		}
		last = rev
	}
	v, err := s.stampTarget(t)
	if err != nil {
		return err
	}
	_, err = kv.Update(ctx, key, v, last)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		// Not this foreman's last write as it knows it: a write of its own landed unseen
		// (a poll's publish cut off by this very shutdown, its answer lost), the entry
		// lapsed, or another foreman wrote it.
		if rev, own := s.ownTargetRevision(ctx, kv, key); own {
			_, err = kv.Update(ctx, key, v, rev)
		}
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		// A create succeeds only on a key with no live entry.
		_, err = kv.Create(ctx, key, v)
		if errors.Is(err, jetstream.ErrKeyExists) {
			s.log.Info("target entry left in place: another foreman wrote it", "target", t.Name)
			return nil
		}
		if err == nil {
			s.log.Info("target entry had lapsed (not refreshed within its TTL: was foreman frozen, or cut off from NATS?); written again", "target", t.Name)
		}
	}
	if err != nil {
		return fmt.Errorf("broker: mark target %s stopped: %w", t.Name, err)
	}
	s.dropTargetsCache()
	return nil
}

// ownTargetRevision is the revision of key's entry when this store wrote it (its boot
// id): a write whose answer was lost, which trev does not know.
func (s *Store) ownTargetRevision(ctx context.Context, kv jetstream.KeyValue, key string) (uint64, bool) {
	e, err := s.targetEntry(ctx, kv, key)
	if err != nil {
		return 0, false
	}
	var t Target
	if json.Unmarshal(e.Value(), &t) != nil || t.BootID != s.cfg.BootID {
		return 0, false
	}
	return e.Revision(), true
}

// stampTarget is entry t as this store writes it: stamped with its boot id, the time and
// the entry's end (TargetTTL on).
func (s *Store) stampTarget(t Target) ([]byte, error) {
	t.BootID, t.Updated = s.cfg.BootID, s.Now()
	t.Expires = t.Updated.Add(s.cfg.TargetTTL)
	return json.Marshal(t)
}

// TargetNameConflict is another foreman found writing its target's entry under the same
// key as this one (the same FOREMAN_TARGET_NAME, or one that differs only where a key
// cannot hold it): the two overwrite each other's entry, each takes the other's for its
// own and ignores it, and the other foremen see whichever wrote last.
type TargetNameConflict struct {
	// Name, BootID and URL are the other foreman's, as its entry gave them.
	Name, BootID, URL string
	// Seen is when this foreman last found its entry overwritten by the other.
	Seen time.Time
	// seen is when it was last found (by Store.clock, Seen's twin with the monotonic
	// reading); until, when it stops being reported unless seen again: longer than either
	// foreman takes between two publishes.
	seen, until time.Time
}

// noteOverwrite reads the entry under key, which is not this store's last write: another
// foreman's is a name conflict, logged when first seen. A deleted or expired entry, or
// this store's own (a write whose answer was lost, or a publish made meanwhile), is none.
func (s *Store) noteOverwrite(ctx context.Context, kv jetstream.KeyValue, key string) {
	e, err := s.targetEntry(ctx, kv, key)
	if err != nil {
		return
	}
	var t Target
	if json.Unmarshal(e.Value(), &t) != nil || t.BootID == s.cfg.BootID {
		return
	}
	c := TargetNameConflict{Name: t.Name, BootID: t.BootID, URL: ollama.RedactURL(t.URL), Seen: s.Now(), seen: s.clock()}
	c.until = c.seen.Add(max(t.lifetime(s.cfg.TargetTTL), s.cfg.TargetTTL))
	s.tmu.Lock()
	prev, had := s.tconflict[key]
	if s.tconflict == nil {
		s.tconflict = map[string]TargetNameConflict{}
	}
	s.tconflict[key] = c
	s.tmu.Unlock()
	if !had || prev.BootID != c.BootID || !c.seen.Before(prev.until) {
		s.log.Error("another foreman publishes its target under this one's name: the two overwrite each other's entry "+
			"and the other foremen see one of them at a time; give each foreman its own FOREMAN_TARGET_NAME",
			"target_key", key, "other_name", c.Name, "other_boot_id", c.BootID, "other_url", c.URL)
	}
}

// TargetNameConflict reports another foreman seen writing target name's entry within
// the last lifetime of either one's entry.
func (s *Store) TargetNameConflict(name string) (TargetNameConflict, bool) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	c, ok := s.tconflict[targetKey(name)]
	if !ok || !s.clock().Before(c.until) {
		return TargetNameConflict{}, false
	}
	return c, true
}
