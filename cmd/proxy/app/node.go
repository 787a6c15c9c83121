package app

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// NodeNameEnv is the environment variable consulted for the node name when
// --hostname-override is unset; DaemonSets set it from spec.nodeName.
const NodeNameEnv = "NODE_NAME"

// NodeName returns the name of this node's Node object: --hostname-override,
// else $NODE_NAME, else the hostname; lowercased, as Node names are.
func (o *Options) NodeName() (string, error) {
	return nodeName(o.HostnameOverride, os.Getenv(NodeNameEnv), os.Hostname)
}

func nodeName(override, env string, hostname func() (string, error)) (string, error) {
	if override != "" {
		name := strings.TrimSpace(override)
		if name == "" {
			return "", errors.New("--hostname-override: must not be blank")
		}
		return strings.ToLower(name), nil
	}
	if name := strings.TrimSpace(env); name != "" {
		return strings.ToLower(name), nil
	}
	h, err := hostname()
	if err != nil {
		return "", fmt.Errorf("node name: no --hostname-override or $%s, and the hostname is unavailable: %w", NodeNameEnv, err)
	}
	name := strings.TrimSpace(h)
	if name == "" {
		return "", fmt.Errorf("node name: no --hostname-override or $%s, and the hostname is empty", NodeNameEnv)
	}
	return strings.ToLower(name), nil
}
