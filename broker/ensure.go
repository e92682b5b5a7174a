package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A foreman creates its streams and buckets at every start, and several foremen on one
// NATS each do. A create of a stream that exists with the same configuration changes
// nothing, where an update rewrites the stream's configuration while the other foremen
// create consumers on it (nats-server 2.15 reads that configuration unlocked there: a
// data race); so each is created, and updated only when its configuration differs.

// ensureStream creates the stream of cfg, or updates it to cfg when it exists otherwise.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return js.UpdateStream(ctx, cfg)
	}
	return st, err
}

// ensureKeyValue is ensureStream for a key-value bucket.
func ensureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.UpdateKeyValue(ctx, cfg)
	}
	return kv, err
}

// ensureObjectStore is ensureStream for an object store.
func ensureObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	obs, err := js.CreateObjectStore(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.UpdateObjectStore(ctx, cfg)
	}
	return obs, err
}

// raisedTTLBucket opens the key-value bucket of cfg, whose TTL and replicas are only
// ever raised: each foreman on a NATS asks for its own, and one asking for less must not
// cut the others' entries short (each entry, or its reader, says how long it counts), nor
// take replicas away that the others start with. A bucket whose TTL and replicas are
// cfg's or more is used as it is.
func raisedTTLBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if kv, err := js.KeyValue(ctx, cfg.Bucket); err == nil {
		st, err := kv.Status(ctx)
		if err == nil {
			replicas := cfg.Replicas
			if b, ok := st.(*jetstream.KeyValueBucketStatus); ok {
				replicas = b.StreamInfo().Config.Replicas
			}
			if st.TTL() >= cfg.TTL && replicas >= cfg.Replicas {
				return kv, nil
			}
			cfg.TTL, cfg.Replicas = max(cfg.TTL, st.TTL()), max(cfg.Replicas, replicas)
		}
	}
	kv, err := ensureKeyValue(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// On a shared NATS the foremen each create the streams, buckets and queue consumers with
// their own settings, and the one started last used to set them for all: a shorter ack
// wait than another foreman's keep-alive had its running jobs delivered again (run twice),
// a smaller FOREMAN_MAX_QUEUE or job TTL cut the others' queue and records short. So a
// store that is not Exclusive only ever raises what it finds: the job TTL, the queue
// bound, the duplicate window, the replicas, a consumer's ack wait and delivery limit,
// and says so when its own setting is lower. The embedded server's foreman is alone and
// sets them as configured (a lower queue bound after a restart applies).

// raiseToExisting raises cfg's limits to those of the stream of the same name, when the
// store shares its NATS and the stream exists. It reports what it kept. A stream it cannot
// read (an election) is an error: updated unread, it would be lowered.
func (s *Store) raiseToExisting(ctx context.Context, cfg *jetstream.StreamConfig) error {
	if s.cfg.Exclusive {
		return nil
	}
	st, err := s.js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // made with cfg
	}
	if err != nil {
		return err
	}
	cur := st.CachedInfo().Config
	s.raiseAge(cfg.Name, "job TTL", &cfg.MaxAge, cur.MaxAge)
	if cur.MaxMsgs < 0 && cfg.MaxMsgs > 0 || cur.MaxMsgs > cfg.MaxMsgs && cfg.MaxMsgs > 0 {
		s.keptHigher(cfg.Name, "queue bound (FOREMAN_MAX_QUEUE)", cfg.MaxMsgs, cur.MaxMsgs)
		cfg.MaxMsgs = cur.MaxMsgs
	}
	if cur.Duplicates > cfg.Duplicates {
		cfg.Duplicates = cur.Duplicates
		if cfg.MaxAge > 0 {
			cfg.Duplicates = min(cfg.Duplicates, cfg.MaxAge)
		}
	}
	if cur.Replicas > cfg.Replicas {
		s.keptHigher(cfg.Name, "replicas (FOREMAN_NATS_REPLICAS)", cfg.Replicas, cur.Replicas)
		cfg.Replicas = cur.Replicas
	}
	return nil
}

// raiseAge raises *ours to theirs, 0 (no limit) being the highest.
func (s *Store) raiseAge(stream, what string, ours *time.Duration, theirs time.Duration) {
	if *ours == 0 || theirs != 0 && theirs <= *ours {
		return
	}
	s.keptHigher(stream, what, *ours, theirs)
	*ours = theirs
}

func (s *Store) keptHigher(stream, what string, ours, theirs any) {
	s.log.Warn("shared NATS: this foreman's setting is below what the other foremen set; kept theirs (to lower it for all, lower it in every foreman's settings, then on the stream)",
		"stream", stream, "setting", what, "this_foreman", ours, "kept", theirs)
}

// raisedConsumer raises cfg's ack wait, delivery limit, inactivity limit and replicas to
// those of the existing queue consumer of the same name, when the store shares its NATS.
// A consumer it cannot read (an election) is an error: updated unread, it would be
// lowered, and a shorter ack wait has running jobs delivered again.
func (s *Store) raisedConsumer(ctx context.Context, cfg *jetstream.ConsumerConfig) error {
	if s.cfg.Exclusive {
		return nil
	}
	c, err := s.queue.Consumer(ctx, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	cur := c.CachedInfo().Config
	if cur.AckWait > cfg.AckWait {
		s.keptHigher(QueueStream+" > "+cfg.Durable, "ack wait (FOREMAN_ACK_WAIT)", cfg.AckWait, cur.AckWait)
		cfg.AckWait = cur.AckWait
	}
	if cur.MaxDeliver < 0 || cur.MaxDeliver > cfg.MaxDeliver && cfg.MaxDeliver > 0 {
		cfg.MaxDeliver = cur.MaxDeliver
	}
	if cur.InactiveThreshold > cfg.InactiveThreshold {
		cfg.InactiveThreshold = cur.InactiveThreshold
	}
	if cur.Replicas > cfg.Replicas {
		cfg.Replicas = cur.Replicas
	}
	return nil
}

// raiseBucket is raiseToExisting for the stream of a key-value bucket or an object store:
// its TTL and replicas.
func (s *Store) raiseBucket(ctx context.Context, stream string, ttl *time.Duration, replicas *int) error {
	cfg := jetstream.StreamConfig{Name: stream, MaxAge: *ttl, Replicas: *replicas}
	if err := s.raiseToExisting(ctx, &cfg); err != nil {
		return err
	}
	*ttl, *replicas = cfg.MaxAge, cfg.Replicas
	return nil
}

// JobTTL is the job TTL in force: this foreman's (Config.JobTTL), or on a shared NATS the
// queue's max age as last read (at Open, and by RefreshLimits), which JetStream holds
// the messages to: longer when another foreman raised it, shorter when an operator
// lowered it on the stream. Records are refreshed, waiting jobs expired and running
// records judged dead by it: by a shorter one of its own, a foreman would end the others'
// jobs early and their live runs for dead ones; by a longer one, the queue would drop
// waiting jobs before the expiry ends them.
func (s *Store) JobTTL() time.Duration {
	if ttl := time.Duration(s.sharedTTL.Load()); ttl > 0 {
		return ttl
	}
	return s.cfg.JobTTL
}

// RefreshLimits reads the job TTL another foreman may have raised on the shared queue
// since (JobTTL). A store of its own has nothing to read.
func (s *Store) RefreshLimits(ctx context.Context) error {
	if s.cfg.Exclusive {
		return nil
	}
	// One read, bounded as each read of the expiry's scan is: the look that makes it
	// comes before the worker's first pick.
	rctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	info, err := s.queue.Info(rctx)
	if err != nil {
		return fmt.Errorf("broker: read the queue's limits: %w", err)
	}
	s.noteServerTime(info.TimeStamp)
	s.sharedTTL.Store(int64(info.Config.MaxAge))
	return nil
}

// A job TTL lowered between two starts of a foreman on a store of its own used to be
// applied at Open: JetStream then dropped at once every queue message and record older
// than the new TTL, and the jobs still waiting among them ended in no state, with no
// event, no webhook and no log line (GET /jobs/{id} said 404). So Open keeps the longer
// max age the streams have (holdLoweredTTL) while JobTTL is already the new one, the
// worker's first expiry look ends those jobs failed (expired) by it, and only then
// ApplyJobTTL lowers the streams (ADR-0101).

// holdLoweredTTL keeps *ttl at the max age stream has when that is longer, on a store of
// its own (a shared one only raises, raiseToExisting), and notes the lowering as pending.
func (s *Store) holdLoweredTTL(ctx context.Context, stream string, ttl *time.Duration) error {
	if !s.cfg.Exclusive {
		return nil
	}
	st, err := s.js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // made with the new TTL
	}
	if err != nil {
		return err
	}
	cur := st.CachedInfo().Config.MaxAge
	if cur == 0 || cur <= *ttl {
		return nil // 0: no limit, which foreman never sets
	}
	if s.heldTTL.Swap(int64(cur)) == 0 {
		s.log.Warn("FOREMAN_JOB_TTL lowered: the jobs that waited longer than it end failed (expired) first, then finished jobs, artifacts and webhook delivery logs older than it are dropped",
			"job_ttl", s.cfg.JobTTL, "was", cur)
	}
	*ttl = cur
	return nil
}

// ApplyJobTTL lowers the streams' max age to the job TTL when Open held a longer one
// (holdLoweredTTL). The worker calls it after an expiry look ended every job that waited
// longer than the TTL. Nothing to do otherwise.
func (s *Store) ApplyJobTTL(ctx context.Context) error {
	was := time.Duration(s.heldTTL.Load())
	if was == 0 {
		return nil
	}
	s.queueCfg.Lock()
	_, err := ensureStream(ctx, s.js, s.queueConfig(s.dup))
	s.queueCfg.Unlock()
	if err != nil {
		return fmt.Errorf("broker: lower the job TTL of %s: %w", QueueStream, err)
	}
	if _, err := ensureKeyValue(ctx, s.js, s.jobsConfig()); err != nil {
		return fmt.Errorf("broker: lower the job TTL of %s: %w", JobsBucket, err)
	}
	if _, err := ensureObjectStore(ctx, s.js, s.artifactsConfig()); err != nil {
		return fmt.Errorf("broker: lower the job TTL of %s: %w", ArtifactsBucket, err)
	}
	s.heldTTL.Store(0)
	s.log.Info("job TTL lowered on the store", "job_ttl", s.cfg.JobTTL, "was", was)
	return nil
}
