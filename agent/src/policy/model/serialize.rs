//! Serialization: a mirror of the file structure (what `policy get` and the state file write).

use super::*;

#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    #[serde(skip_serializing_if = "is_enforce")]
    mode: Mode,
    #[serde(rename = "defaultAction")]
    default_action: Action,
    segments: SegmentsOut<'a>,
    rules: Vec<RuleOut>,
    #[serde(rename = "rateLimits", skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<RateLimitOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts: Option<Alerts>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    apis: Vec<ApiOut>,
}

#[derive(Serialize)]
struct ApiOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    segment: String,
    ports: Vec<PortSpec>,
    protocol: ApiProtocol,
}

fn is_enforce(m: &Mode) -> bool {
    *m == Mode::Enforce
}

/// `segments` is a mapping in file order.
struct SegmentsOut<'a>(&'a [Segment]);

#[derive(Serialize)]
struct SegmentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<SelectorOut<'a>>,
    #[serde(skip_serializing_if = "is_enforce")]
    mode: Mode,
}

#[derive(Serialize)]
struct SelectorOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: &'a std::collections::BTreeMap<String, String>,
    #[serde(rename = "matchExpressions", skip_serializing_if = "Vec::is_empty")]
    match_expressions: Vec<ExpressionOut<'a>>,
}

#[derive(Serialize)]
struct ExpressionOut<'a> {
    key: &'a str,
    operator: &'static str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    values: &'a [String],
}

impl Serialize for SegmentsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for seg in self.0 {
            // A label-selected segment without CIDRs is written without `cidrs`.
            let cidrs = (seg.selector.is_none() || !seg.cidrs.is_empty())
                .then(|| seg.cidrs.iter().map(|c| c.to_string()).collect());
            let selector = seg.selector.as_ref().map(|s| SelectorOut {
                namespace: s.namespace.as_deref(),
                labels: &s.selector.match_labels,
                match_expressions: s
                    .selector
                    .expressions
                    .iter()
                    .map(|r| ExpressionOut { key: &r.key, operator: r.operator.as_str(), values: &r.values })
                    .collect(),
            });
            m.serialize_entry(&seg.name, &SegmentOut { cidrs, selector, mode: seg.mode })?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct RuleOut {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    from: Vec<String>,
    to: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<PortSpec>>,
    action: Action,
    #[serde(skip_serializing_if = "is_enforce")]
    mode: Mode,
}

#[derive(Serialize)]
struct RateLimitOut {
    name: String,
    from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<PortSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets: Option<BucketOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<BucketOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<BucketOut>,
    scope: LimitScope,
}

#[derive(Serialize)]
struct BucketOut {
    rate: u64,
    per: Per,
    burst: u64,
}

impl From<&BucketSpec> for BucketOut {
    fn from(b: &BucketSpec) -> Self {
        BucketOut { rate: b.rate, per: b.per, burst: b.burst }
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = |refs: &[SegRef]| refs.iter().map(|r| self.seg_ref_name(*r)).collect();
        FileOut {
            version: POLICY_VERSION,
            mode: self.mode,
            default_action: self.default_action,
            segments: SegmentsOut(&self.segments),
            rules: self
                .rules
                .iter()
                .map(|r| RuleOut {
                    name: r.name.clone(),
                    description: r.description.clone(),
                    from: names(&r.from),
                    to: names(&r.to),
                    ports: r.ports.clone(),
                    action: r.action,
                    mode: r.mode,
                })
                .collect(),
            rate_limits: self
                .rate_limits
                .iter()
                .map(|l| RateLimitOut {
                    name: l.name.clone(),
                    from: self.seg_ref_name(l.from),
                    to: l.to.as_deref().map(&names),
                    ports: l.ports.clone(),
                    packets: l.packets.as_ref().map(BucketOut::from),
                    connections: l.connections.as_ref().map(BucketOut::from),
                    bytes: l.bytes.as_ref().map(BucketOut::from),
                    scope: l.scope,
                })
                .collect(),
            alerts: self.alerts.clone(),
            apis: self
                .apis
                .iter()
                .map(|a| ApiOut {
                    name: a.name.clone(),
                    segment: self.seg_ref_name(SegRef::Named(a.segment)),
                    ports: a.ports.clone(),
                    protocol: a.protocol,
                })
                .collect(),
        }
        .serialize(s)
    }
}
