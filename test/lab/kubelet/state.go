package kubelet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// UnreadyFile is the file that, while it exists, makes the pod ns/name
// report not ready whatever its probe says. Tests create it (after
// os.MkdirAll of its directory if the pod has not started yet) to flip
// readiness and remove it to flip back.
func UnreadyFile(stateDir, namespace, name string) string {
	return filepath.Join(podControlDir(stateDir, namespace, name), "unready")
}

// LogFile is where the pod's process writes stdout and stderr.
func LogFile(stateDir, namespace, name string) string {
	return filepath.Join(stateDir, "pods", namespace+"_"+name+".log")
}

func podControlDir(stateDir, namespace, name string) string {
	return filepath.Join(stateDir, "pods", namespace, name)
}

// shortID is the 8 hex digits that name a pod's namespace and veth. Real
// UIDs are UUIDs whose first 8 characters are hex; anything else (tests,
// hand-made objects) is hashed so names stay valid.
func shortID(uid types.UID) string {
	s := strings.ToLower(strings.ReplaceAll(string(uid), "-", ""))
	if len(s) >= 8 && isHex(s[:8]) {
		return s[:8]
	}
	sum := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(sum[:4])
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// PodNetnsName is the network namespace of the pod with this UID.
func PodNetnsName(uid types.UID) string { return "p" + shortID(uid) }

// VethName is the node-side veth of the pod with this UID (≤ 15 chars).
func VethName(uid types.UID) string { return "v" + shortID(uid) }

// podRecord remembers a pod network namespace this kubelet created, so a
// later run can clean up exactly its own leftovers.
type podRecord struct {
	UID       types.UID `json:"uid"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Netns     string    `json:"netns"`
	Veth      string    `json:"veth"`
	IP        string    `json:"ip"`
	IP6       string    `json:"ip6,omitempty"` // on a dual-stack node
}

type recordStore struct{ dir string }

func newRecordStore(stateDir, node string) (*recordStore, error) {
	dir := filepath.Join(stateDir, node)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &recordStore{dir: dir}, nil
}

func (s *recordStore) path(netns string) string { return filepath.Join(s.dir, netns+".json") }

// save writes atomically so a crash never leaves half a record.
func (s *recordStore) save(r podRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := s.path(r.Netns) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(r.Netns))
}

// owner returns the UID recorded for netns, if any.
func (s *recordStore) owner(netns string) (types.UID, bool) {
	b, err := os.ReadFile(s.path(netns))
	if err != nil {
		return "", false
	}
	var r podRecord
	if json.Unmarshal(b, &r) != nil {
		return "", false
	}
	return r.UID, true
}

func (s *recordStore) remove(netns string) error {
	err := os.Remove(s.path(netns))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// load returns every record, sorted by netns; unreadable ones are returned
// as errors but do not hide the others.
func (s *recordStore) load() ([]podRecord, []error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{err}
	}
	var recs []podRecord
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") || !strings.HasPrefix(name, "p") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r podRecord
		if err := json.Unmarshal(b, &r); err != nil || r.Netns != strings.TrimSuffix(name, ".json") {
			errs = append(errs, fmt.Errorf("bad record %s: %v", name, err))
			continue
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Netns < recs[j].Netns })
	return recs, errs
}
