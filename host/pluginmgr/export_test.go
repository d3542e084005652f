package pluginmgr

// FileHashes is how many times a plugin binary was hashed outside the
// catalog (by Plugin.Digest).
func FileHashes() int64 { return fileHashes.Load() }
