//! What a publish tells the world: one `<destination>@<digest>` line per
//! destination on stdout, GitHub Actions outputs and step summary, and the
//! same facts as JSON for `--metadata-file`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::progress::Totals;

use super::Report;

/// The facts every output format draws from.
#[derive(Debug, Serialize)]
pub struct Metadata {
    pub digest: String,
    /// `<first destination>@<digest>`.
    pub image: String,
    pub references: Vec<String>,
    pub tags: Vec<String>,
    pub withheld: Vec<Withheld>,
    pub version: Option<String>,
    pub platforms: Vec<PlatformEntry>,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Serialize)]
pub struct Withheld {
    pub destination: String,
    pub tag: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct PlatformEntry {
    pub platform: String,
    pub digest: String,
    pub input: String,
}

impl Metadata {
    pub fn new(report: &Report, version: Option<String>, totals: Totals) -> Metadata {
        let digest = report.digest().to_string();
        let references: Vec<String> = report
            .destinations
            .iter()
            .map(|d| format!("{}@{digest}", d.destination))
            .collect();
        let mut tags: Vec<String> = Vec::new();
        for d in &report.destinations {
            for t in &d.tags {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        Metadata {
            image: references.first().cloned().unwrap_or_default(),
            digest,
            references,
            tags,
            withheld: report
                .destinations
                .iter()
                .flat_map(|d| {
                    d.withheld.iter().map(|(tag, reason)| Withheld {
                        destination: d.destination.clone(),
                        tag: tag.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect(),
            version,
            platforms: report
                .images
                .iter()
                .map(|i| PlatformEntry {
                    platform: i.platform.to_string(),
                    digest: i.manifest.digest.to_string(),
                    input: i.input.clone(),
                })
                .collect(),
            totals,
        }
    }

    /// Lines for `$GITHUB_OUTPUT`: `digest`, `image`, `tags` (multi-line),
    /// `version`.
    pub fn github_output(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digest={}", self.digest);
        let _ = writeln!(out, "image={}", self.image);
        // A delimiter that cannot occur in tags (they are [A-Za-z0-9._-]).
        let delimiter = format!("MANIFOLD_EOF_{}", &self.digest[7..19]);
        let _ = writeln!(out, "tags<<{delimiter}");
        for tag in &self.tags {
            let _ = writeln!(out, "{tag}");
        }
        let _ = writeln!(out, "{delimiter}");
        let _ = writeln!(out, "version={}", self.version.as_deref().unwrap_or(""));
        out
    }

    /// A short Markdown summary for `$GITHUB_STEP_SUMMARY`.
    pub fn step_summary(&self) -> String {
        let mut out = String::from("### manifold published an image\n\n");
        let _ = writeln!(out, "| platform | manifest |\n|---|---|");
        for p in &self.platforms {
            let _ = writeln!(out, "| `{}` | `{}` |", p.platform, p.digest);
        }
        let _ = writeln!(out, "\n**Index** `{}`\n", self.digest);
        for r in &self.references {
            let _ = writeln!(out, "- `{r}`");
        }
        let tags: Vec<String> = self.tags.iter().map(|t| format!("`{t}`")).collect();
        let _ = writeln!(
            out,
            "\n**Tags** {}",
            if tags.is_empty() {
                "none (by digest only)".to_owned()
            } else {
                tags.join(" ")
            }
        );
        for w in &self.withheld {
            let _ = writeln!(
                out,
                "- `{}` withheld at `{}`: {}",
                w.tag, w.destination, w.reason
            );
        }
        let _ = writeln!(
            out,
            "\n**Bytes** {} uploaded, {} already there\n",
            human_bytes(self.totals.bytes_uploaded),
            human_bytes(self.totals.bytes_skipped)
        );
        out
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(343 * 1024 * 1024), "343.0 MiB");
    }
}
