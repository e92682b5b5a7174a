package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// PresenceBucket holds one key per running foreman process (its boot id), kept alive by
// a heartbeat: on a NATS shared by several foremen it tells which sync callers are still
// there.
const PresenceBucket = "FOREMAN_PRESENCE"

// defaultPresenceTTL is how long a foreman stays present after its last heartbeat.
const defaultPresenceTTL = 30 * time.Second

func presenceKey(bootID string) string { return "boot." + bootID }

// presence is the value under a boot id's key: for people reading the bucket.
type presence struct {
	BootID    string    `json:"boot_id"`
	StartedAt time.Time `json:"started_at"`
}

func (s *Store) openPresence(ctx context.Context) error {
	err := s.untilReady(ctx, "bucket "+PresenceBucket, func(ctx context.Context) (err error) {
		pcfg := s.presenceConfig()
		if err := s.raiseBucket(ctx, "KV_"+PresenceBucket, &pcfg.TTL, &pcfg.Replicas); err != nil {
			return err
		}
		s.presence, err = ensureKeyValue(ctx, s.js, pcfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("broker: bucket %s: %w", PresenceBucket, err)
	}
	// Present from the start, before the gateway takes a call.
	return s.untilReady(ctx, "presence", s.heartbeat)
}

func (s *Store) presenceConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      PresenceBucket,
		Description: "running foreman processes, by boot id",
		History:     1,
		TTL:         s.cfg.PresenceTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	}
}

func (s *Store) heartbeat(ctx context.Context) error {
	v, err := json.Marshal(presence{BootID: s.cfg.BootID, StartedAt: s.started.UTC()})
	if err != nil {
		return err
	}
	if _, err := s.presence.Put(ctx, presenceKey(s.cfg.BootID), v); err != nil {
		return fmt.Errorf("broker: announce %s: %w", s.cfg.BootID, err)
	}
	return nil
}

// presenceRetry is how long Announce waits to try a failed heartbeat again, the first
// time: twice as long each time after, up to the heartbeat interval. A foreman whose
// presence lapsed while NATS could not be reached is present again moments after NATS
// is back, not at its next heartbeat, up to 10 s later, meanwhile taken for gone.
const presenceRetry = 250 * time.Millisecond

// Announce keeps this process present (see CallerGone) until ctx ends, then withdraws it:
// a foreman that stops in order has ended its sync callers' jobs already. Run it for as
// long as the gateway takes calls. A heartbeat is sent every PresenceTTL/3; one that
// failed is tried again sooner (presenceRetry).
func (s *Store) Announce(ctx context.Context) error {
	every := s.cfg.PresenceTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	ticks := t.C
	if s.presenceTicks != nil {
		ticks = s.presenceTicks
	}
	retry := time.NewTimer(every)
	retry.Stop()
	defer retry.Stop()
	var fails failurelog.Loop
	backoff := presenceRetry
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := s.presence.Delete(dctx, presenceKey(s.cfg.BootID)); err != nil {
				s.log.Warn("withdraw presence", "boot_id", s.cfg.BootID, "err", err)
			}
			return nil
		case <-ticks:
		case <-retry.C:
		}
		hctx, cancel := context.WithTimeout(ctx, every)
		err := s.heartbeat(hctx)
		cancel()
		switch {
		case err == nil:
			fails.Worked(s.log, "presence heartbeat")
			retry.Stop()
			backoff = presenceRetry
		case ctx.Err() == nil:
			fails.Failed(s.log, "presence heartbeat", err)
			retry.Reset(backoff)
			backoff = min(2*backoff, every)
		}
	}
}

// Present reports whether foreman process bootID is running, as present does: a bucket
// that cannot be read says it is.
func (s *Store) Present(ctx context.Context, bootID string) bool { return s.present(ctx, bootID) }

// present reports whether foreman process bootID is running: its key is in the presence
// bucket. When the bucket cannot be read it answers true: a caller is only given up for
// gone on evidence.
func (s *Store) present(ctx context.Context, bootID string) bool {
	present, _ := s.presenceOf(ctx, bootID)
	return present
}

// presenceOf is present, and for a process not present whether it withdrew (stopped in
// order: its key's delete marker stands) rather than lapsed or never announced itself.
func (s *Store) presenceOf(ctx context.Context, bootID string) (present, withdrawn bool) {
	key := presenceKey(bootID)
	_, err := s.presence.Get(ctx, key)
	if s.mayBeReplicated() && (errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)) {
		// A replica behind the bucket's leader (leaderget.go) says "not found" of a
		// foreman that announced itself: its sync callers would be given up for gone.
		err = s.leaderPresence(ctx, key)
	}
	if errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, true
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, false
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, jetstream.ErrInvalidKey) {
		// A boot id that is no key is another foreman's word (a record's runner_boot):
		// nothing to warn of; neither is a read its caller gave up on.
		s.log.Warn("read presence", "boot_id", bootID, "err", err)
	}
	return true, false
}

// leaderPresence reads presence key from the bucket's leader: nil when it stands,
// jetstream.ErrKeyDeleted for a delete marker (a withdrawal), ErrKeyNotFound for none.
func (s *Store) leaderPresence(ctx context.Context, key string) error {
	m, err := s.leaderMsg(ctx, "KV_"+PresenceBucket, msgGet{LastFor: "$KV." + PresenceBucket + "." + key})
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return jetstream.ErrKeyNotFound
	case err != nil:
		return err
	case bytes.Contains(m.Header, []byte("KV-Operation: DEL")), bytes.Contains(m.Header, []byte("KV-Operation: PURGE")):
		return jetstream.ErrKeyDeleted
	}
	return nil
}
