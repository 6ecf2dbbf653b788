"""The reference hub's HTML pages as Jinja templates (served through a DictLoader).

They live in Python rather than as .html files so that a plain `pip install` of the project
(which ships only Python modules) still carries them. No CDN, no external fonts or scripts:
the pages must work on an isolated network.
"""

from __future__ import annotations

BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{{ hub_name }}{% endblock %}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.5; }
h1 { font-size: 1.5rem; }
label { display: block; margin-top: 1rem; font-weight: 600; }
input { font-size: 1.1rem; padding: .4rem; width: 100%; max-width: 20rem; }
button, .button { margin-top: 1rem; font-size: 1.1rem; padding: .5rem 1.2rem;
                  background: #0b5cad; color: #fff; border: 0; border-radius: .3rem;
                  text-decoration: none; display: inline-block; }
.error { background: #fde8e8; border-left: .3rem solid #b00020; padding: .6rem 1rem; }
.note { color: #555; font-size: .9rem; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: .4rem; border-bottom: 1px solid #ddd; }
code { font-size: 1.05rem; }
</style>
</head>
<body>
<header><a href="{{ url_for('index') }}">{{ hub_name }}</a></header>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

INDEX = """{% extends "base.html" %}
{% block main %}
<h1>{{ hub_name }}</h1>
<p>A Medix reference hub. Patients: <a href="{{ url_for('patient.form') }}">open a study
with its Medis code</a>. Referring physicians:
<a href="{{ url_for('physician.sign_in') }}">sign in to your inbox</a>.</p>
<p class="note">Nodes talk to this hub under <code>/medix/v1</code> with mutual TLS;
operators use <code>/admin</code> with a bearer token.</p>
{% endblock %}
"""

PATIENT_FORM = """{% extends "base.html" %}
{% block title %}Your study - {{ hub_name }}{% endblock %}
{% block main %}
<h1>Open your study</h1>
{% if error %}<p class="error" role="alert"><strong>{{ error.title }}.</strong>
{{ error.detail }}</p>{% endif %}
{% if not locked %}
<form method="post" action="{{ url_for('patient.form') }}" autocomplete="off">
<label for="code">Medis code (on the slip from the imaging center)</label>
<input id="code" name="code" value="{{ code }}" placeholder="XXXX-XXXX-XXXX" required
       autocapitalize="characters" spellcheck="false">
<label for="birth_date">Your date of birth</label>
<input id="birth_date" name="birth_date" type="date" required>
<button type="submit">Open</button>
</form>
<p class="note">Upper or lower case, with or without dashes: both work.</p>
{% endif %}
{% endblock %}
"""

SIGN_IN = """{% extends "base.html" %}
{% block title %}Physician sign-in - {{ hub_name }}{% endblock %}
{% block main %}
<h1>Sign in to your inbox</h1>
{% if error %}<p class="error" role="alert"><strong>{{ error.title }}.</strong>
{{ error.detail }}</p>{% endif %}
{% if not locked %}
<form method="post" action="{{ url_for('physician.sign_in') }}">
<input type="hidden" name="{{ csrf_field }}" value="{{ csrf }}">
<label for="login">Login</label>
<input id="login" name="login" value="{{ login }}" required autocomplete="username"
       autocapitalize="none" spellcheck="false">
<label for="password">Password</label>
<input id="password" name="password" type="password" required
       autocomplete="current-password">
<button type="submit">Sign in</button>
</form>
<p class="note">The hub's administrator gives you your login. You see the studies you
referred, and only those.</p>
{% endif %}
{% endblock %}
"""

STUDY_LIST = """{% extends "base.html" %}
{% block title %}{{ heading }} - {{ hub_name }}{% endblock %}
{% block main %}
<h1>{{ heading }}</h1>
{% if sign_out_csrf %}
<form method="post" action="{{ url_for('physician.sign_out') }}">
<input type="hidden" name="{{ csrf_field }}" value="{{ sign_out_csrf }}">
<button type="submit">Sign out</button>
</form>
{% endif %}
{% if not studies %}<p>No studies yet.</p>{% else %}
<table>
<tr><th>Date</th><th>Study</th><th>Images</th>{% if show_code %}<th>Medis code</th>{% endif %}
<th></th></tr>
{% for study in studies %}
<tr>
<td>{{ study.study_date | dicom_date }}</td>
<td>{{ study.study_description or "(no description)" }}
{% if study.modalities %}<span class="note">{{ study.modalities | join(", ") }}</span>{% endif %}
{% if show_patient and study.patient_name %}<br><span class="note">
{{ study.patient_name | person_name }}</span>{% endif %}</td>
<td>{{ study.instance_count }}</td>
{% if show_code %}<td><code>{{ study.medis_code | medis }}</code></td>{% endif %}
<td><a class="button" href="{{ url_for('patient.download', token=study.download_token) }}">
Download</a></td>
</tr>
{% endfor %}
</table>
<p class="note">Downloads are zip files of the DICOM images; links work for an hour.</p>
{% endif %}
{% endblock %}
"""

ERROR = """{% extends "base.html" %}
{% block title %}{{ error.title }} - {{ hub_name }}{% endblock %}
{% block main %}
<h1>{{ error.title }}</h1>
<p class="error" role="alert">{{ error.detail }}</p>
{% endblock %}
"""

TEMPLATES = {
    "base.html": BASE,
    "index.html": INDEX,
    "patient_form.html": PATIENT_FORM,
    "sign_in.html": SIGN_IN,
    "study_list.html": STUDY_LIST,
    "error.html": ERROR,
}
