package broker_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// artifactBytes is n bytes in which every 4-byte run differs from its neighbours, so a
// part read from the wrong place never matches by chance.
func artifactBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i>>24) ^ byte(i>>16) ^ byte(i>>8)*3 ^ byte(i)*7
	}
	return b
}

// objectChunks returns the stream of the artifacts bucket and the sequences of the chunks
// of artifact name of job id, in order.
func objectChunks(t *testing.T, b *brokertest.Bundle, id, name string) (jetstream.Stream, string, []uint64) {
	t.Helper()
	ctx := ctxT(t)
	js := b.JetStream(t)
	obs, err := js.ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, id+"/"+name)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "OBJ_"+broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	subj := "$O." + broker.ArtifactsBucket + ".C." + info.NUID
	var seqs []uint64
	for next := uint64(1); ; {
		m, err := st.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, m.Sequence)
		next = m.Sequence + 1
	}
	if len(seqs) != int(info.Chunks) || len(seqs) < 4 {
		t.Fatalf("%d chunks found of %d; want them all, and at least 4", len(seqs), info.Chunks)
	}
	return st, subj, seqs
}

func readArtifact(t *testing.T, f *broker.ArtifactFile, off, n int64) ([]byte, error) {
	t.Helper()
	return io.ReadAll(f.Reader(ctxT(t), off, n))
}

// An opened artifact is read in parts, a chunk at a time as it is asked for: a part is
// read without the chunks after it, and the object's info alone opens it; a whole read
// fails, short of the end, where the chunks end early or are not the object's.
func TestArtifactFileReadsItsChunks(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	data := artifactBytes(700_000)
	for _, name := range []string{"cut.bin", "swapped.bin"} {
		if _, err := b.Store.PutArtifact(ctx, j.ID, name, "application/octet-stream", data); err != nil {
			t.Fatal(err)
		}
	}
	f, err := b.Store.OpenArtifact(ctx, j.ID, "cut.bin")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if f.Size != int64(len(data)) || f.ContentType != "application/octet-stream" || f.Digest != "SHA-256="+b64url(sum[:]) {
		t.Fatalf("opened %+v", f)
	}
	size := f.Size
	for _, p := range [][2]int64{{0, size}, {0, 1}, {131_000, 2_000}, {200_000, 300_000}, {size - 10, 10}, {size, 0}} {
		got, err := readArtifact(t, f, p[0], p[1])
		if err != nil || !bytes.Equal(got, data[p[0]:p[0]+p[1]]) {
			t.Fatalf("bytes %d+%d: %d bytes, %v; want exactly them", p[0], p[1], len(got), err)
		}
	}

	// The last chunk gone: the object still opens, a part before it still reads, and a
	// whole read gives every byte before it, then fails.
	st, _, seqs := objectChunks(t, b, j.ID, "cut.bin")
	last, err := st.GetMsg(ctx, seqs[len(seqs)-1])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, last.Sequence); err != nil {
		t.Fatal(err)
	}
	if f, err = b.Store.OpenArtifact(ctx, j.ID, "cut.bin"); err != nil || f.Size != size {
		t.Fatalf("open with its last chunk gone: %+v, %v", f, err)
	}
	if got, err := readArtifact(t, f, 100, 1_000); err != nil || !bytes.Equal(got, data[100:1_100]) {
		t.Fatalf("part before the missing chunk: %d bytes, %v", len(got), err)
	}
	got, err := readArtifact(t, f, 0, size)
	if !errors.Is(err, jetstream.ErrMsgNotFound) || !bytes.Equal(got, data[:size-int64(len(last.Data))]) {
		t.Fatalf("whole read with the last chunk gone: %d bytes, %v; want %d, then the chunk not found", len(got), err, size-int64(len(last.Data)))
	}

	// The second chunk moved to the end: as many bytes, not the object's. A whole read
	// stops before the chunk that completes it, on its digest; a part is served as read.
	st, subj, seqs := objectChunks(t, b, j.ID, "swapped.bin")
	second, err := st.GetMsg(ctx, seqs[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, second.Sequence); err != nil {
		t.Fatal(err)
	}
	if _, err := b.JetStream(t).Publish(ctx, subj, second.Data); err != nil {
		t.Fatal(err)
	}
	if f, err = b.Store.OpenArtifact(ctx, j.ID, "swapped.bin"); err != nil {
		t.Fatal(err)
	}
	got, err = readArtifact(t, f, 0, size)
	if !errors.Is(err, jetstream.ErrDigestMismatch) || int64(len(got)) != size-int64(len(second.Data)) {
		t.Fatalf("whole read of chunks out of order: %d bytes, %v; want %d, then a digest mismatch", len(got), err, size-int64(len(second.Data)))
	}
	if got, err := readArtifact(t, f, 0, 1_000); err != nil || !bytes.Equal(got, data[:1_000]) {
		t.Fatalf("first part of chunks out of order: %d bytes, %v", len(got), err)
	}
}

// A replica behind the writes has the record as it was before the artifact was listed,
// or no info of its object: the stream leaders have both, so an artifact stored a moment
// ago opens (and reads), and one never stored is still not found.
func TestArtifactOpensPastALaggingReplica(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	before, err := b.JobRecords(t).Get(ctx, "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	data := artifactBytes(300_000)
	if _, err := b.Store.PutArtifact(ctx, j.ID, "out.bin", "application/octet-stream", data); err != nil {
		t.Fatal(err)
	}
	b.Store.LagRecordReads(before)
	b.Store.LagArtifactInfo()
	f, err := b.Store.OpenArtifact(ctx, j.ID, "out.bin")
	if err != nil {
		t.Fatalf("open past a lagging replica: %v", err)
	}
	if got, err := readArtifact(t, f, 0, f.Size); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read: %d bytes of %d, %v", len(got), len(data), err)
	}
	if _, _, err := b.Store.GetArtifact(ctx, j.ID, "out.bin"); err != nil {
		t.Fatalf("get past a lagging replica: %v", err)
	}
	if _, err := b.Store.OpenArtifact(ctx, j.ID, "never.bin"); !errors.Is(err, broker.ErrArtifactNotFound) {
		t.Fatalf("open of an artifact never stored: %v, want ErrArtifactNotFound", err)
	}
}

// A result the record holds opens from the record, with the digest its object would have.
func TestArtifactFileOfAHeldResult(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	res := []byte(`{"message":{"content":"hi"},"done":true}`)
	a, ok := broker.HoldResult(res)
	if !ok {
		t.Fatal("result not held")
	}
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.Result = res
		j.SetArtifact(a)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f, err := b.Store.OpenArtifact(ctx, j.ID, broker.ResultArtifact)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(res)
	if f.Size != int64(len(res)) || f.Digest != "SHA-256="+b64url(sum[:]) {
		t.Fatalf("opened %+v", f)
	}
	if got, err := readArtifact(t, f, 2, 7); err != nil || string(got) != string(res[2:9]) {
		t.Fatalf("part: %q, %v", got, err)
	}
	if _, err := b.Store.OpenArtifact(ctx, j.ID, "missing.txt"); !errors.Is(err, broker.ErrArtifactNotFound) {
		t.Fatalf("missing artifact: %v", err)
	}
}

func b64url(b []byte) string { return base64.URLEncoding.EncodeToString(b) }
