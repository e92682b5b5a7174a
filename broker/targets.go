package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TargetsBucket holds one key per foreman's Ollama target (its name): what the target has
// and has loaded, so every foreman on a shared NATS knows the models of all of them. An
// entry not refreshed within its TTL goes away by itself with its foreman.
const TargetsBucket = "FOREMAN_TARGETS"

// defaultTargetTTL is how long a target's entry lives after its last refresh.
const defaultTargetTTL = 90 * time.Second

// targetsMaxAge is how long Targets serves its last read before it reads the bucket again.
const targetsMaxAge = time.Second

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
	// Expires is when the entry stops counting unless refreshed: Updated plus its own
	// foreman's TargetTTL (entries of earlier versions lack it; the reader's TTL serves).
	Expires time.Time `json:"expires,omitzero"`
}

// live reports whether t counts at now: before its own expiry, or, for an entry without
// one, within ttl of its update.
func (t Target) live(now time.Time, ttl time.Duration) bool {
	exp := t.Expires
	if exp.IsZero() {
		exp = t.Updated.Add(ttl)
	}
	return now.Before(exp)
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
	// The bucket's TTL is the longest of its foremen's: each entry says when it expires
	// (Target.Expires), and a foreman polling more often than another must not cut the
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

// PublishTarget writes t (stamped with this foreman's boot id and the time) under its name.
func (s *Store) PublishTarget(ctx context.Context, t Target) error {
	kv, err := s.targetsKV(ctx)
	if err != nil {
		return err
	}
	t.BootID, t.Updated = s.cfg.BootID, s.Now()
	t.Expires = t.Updated.Add(s.cfg.TargetTTL)
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, targetKey(t.Name), v); err != nil {
		return fmt.Errorf("broker: publish target %s: %w", t.Name, err)
	}
	s.dropTargetsCache() // read our own write
	return nil
}

// WithdrawTarget removes the entry of target name (a foreman that stops in order).
func (s *Store) WithdrawTarget(ctx context.Context, name string) error {
	kv, err := s.targetsKV(ctx)
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, targetKey(name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("broker: withdraw target %s: %w", name, err)
	}
	s.dropTargetsCache()
	return nil
}

// dropTargetsCache makes the next Targets read the bucket, and keeps a read begun before
// from caching what it read (it may predate this change).
func (s *Store) dropTargetsCache() {
	s.tmu.Lock()
	s.tcache = nil
	s.tgen++
	s.tmu.Unlock()
}

// Targets returns the live targets, sorted by name. It reads the bucket at most once a
// second and serves that read in between: it is called on every pick and submit. Reads
// at once (a pick, a submit, a poll) may end in any order: one is cached only if no read
// begun after it was cached first, so an older list (without another foreman's entry
// published meanwhile) never replaces a newer one.
func (s *Store) Targets(ctx context.Context) ([]Target, error) {
	s.tmu.Lock()
	if s.tcache != nil && s.Now().Sub(s.tcacheAt) < targetsMaxAge {
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
	keys, err := s.bucketKeys(ctx, TargetsBucket, ">")
	if err != nil {
		return nil, fmt.Errorf("broker: list targets: %w", err)
	}
	now := s.Now()
	out := []Target{}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("broker: read target %s: %w", k, err)
		}
		var t Target
		if json.Unmarshal(e.Value(), &t) != nil || !t.live(now, s.cfg.TargetTTL) {
			continue // unreadable, or past its foreman's TTL (the bucket keeps the longest one)
		}
		out = append(out, t)
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
		s.tcache, s.tcacheAt, s.tcacheRead = out, now, read
	}
	s.tmu.Unlock()
	return out, nil
}
