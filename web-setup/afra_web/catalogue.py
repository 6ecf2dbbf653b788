# ruff: noqa: E501, RUF001 - translations read best on one line, and Persian looks like Latin to ruff
"""Persian translations of the web app's English texts (the English text is the key).

tests/web/test_catalogue.py fails when a text the app can show has no entry here, or when an
entry loses one of its {placeholders}. Technical terms a PACS administrator knows in English
(AE title, DICOM, PACS, C-ECHO, DHCP, DNS, CA, PEM) stay in Latin script.
"""

from __future__ import annotations

PERSIAN: dict[str, str] = {
    # -- claim and sign-in
    "Set up this box": "راه‌اندازی این دستگاه",
    "Prove that you are at the box: type the setup code from its label, or press its button.": (
        "نشان دهید که کنار دستگاه هستید: کد راه‌اندازی روی برچسب آن را وارد کنید یا دکمهٔ آن را فشار دهید."
    ),
    "Your name": "نام شما",
    "Kept in the audit log with what you do here.": "همراه با کارهایی که اینجا می‌کنید در گزارش ممیزی ثبت می‌شود.",
    "Setup code": "کد راه‌اندازی",
    "On the label under the box: 12 letters and digits.": "روی برچسب زیر دستگاه: ۱۲ حرف و رقم.",
    "Claim with the code": "ادامه با کد",
    "or": "یا",
    "The button on the box": "دکمهٔ روی دستگاه",
    "Hold the button on the box for about 3 seconds, until the light blinks, then press Continue.": (
        "دکمهٔ روی دستگاه را حدود ۳ ثانیه نگه دارید تا چراغ چشمک بزند، سپس «ادامه» را بزنید."
    ),
    "The setup window is open.": "پنجرهٔ راه‌اندازی باز است.",
    "The setup window is closed.": "پنجرهٔ راه‌اندازی بسته است.",
    "This box has no button window (emulation).": "این دستگاه دکمه ندارد (شبیه‌سازی).",
    "Continue with the button": "ادامه با دکمه",
    "Sign in": "ورود",
    "Sign out": "خروج",
    "Admin password": "گذرواژهٔ مدیر",
    "Forgot the password?": "گذرواژه را فراموش کرده‌اید؟",
    "Hold the button on the box for about 3 seconds, until the light blinks, then press "
    "Continue: you can set a new password.": (
        "دکمهٔ روی دستگاه را حدود ۳ ثانیه نگه دارید تا چراغ چشمک بزند، سپس «ادامه» را بزنید:"
        " می‌توانید گذرواژهٔ تازه‌ای بگذارید."
    ),
    "Enter your name: the audit log records who did what.": (
        "نام خود را وارد کنید: گزارش ممیزی ثبت می‌کند چه کسی چه کرد."
    ),
    "Too many wrong attempts. Try again in {t}.": "تلاش‌های نادرست زیاد بود. {t} دیگر دوباره امتحان کنید.",
    "Too many wrong attempts. Try again later.": "تلاش‌های نادرست زیاد بود. بعداً دوباره امتحان کنید.",
    "The setup window is not open. Hold the button on the box for about 3 seconds until the "
    "light blinks, then press Continue again.": (
        "پنجرهٔ راه‌اندازی باز نیست. دکمهٔ روی دستگاه را حدود ۳ ثانیه نگه دارید تا چراغ چشمک"
        " بزند، سپس دوباره «ادامه» را بزنید."
    ),
    "This box has no setup code. Use the button on the box.": (
        "این دستگاه کد راه‌اندازی ندارد. از دکمهٔ روی دستگاه استفاده کنید."
    ),
    "This is not a setup code. Compare it with the label: 12 letters and digits, such as "
    "ABCD-EFGH-JKMN.": (
        "این کد راه‌اندازی نیست. آن را با برچسب مقایسه کنید: ۱۲ حرف و رقم، مانند ABCD-EFGH-JKMN."
    ),
    "This setup code is wrong.": "این کد راه‌اندازی نادرست است.",
    "This password is wrong.": "این گذرواژه نادرست است.",
    "This form has expired or did not come from this box. Reload the page and try again.": (
        "این فرم منقضی شده یا از این دستگاه نیامده است. صفحه را دوباره بارگذاری کنید و دوباره"
        " امتحان کنید."
    ),
    # -- the wizard
    "Setup steps": "مراحل راه‌اندازی",
    "Claim": "تحویل",
    "password": "گذرواژه",
    "network": "شبکه",
    "dicom": "DICOM",
    "hub": "هاب",
    "summary": "خلاصه",
    "Network": "شبکه",
    "DICOM": "DICOM",
    "Medix hub": "هاب مدیکس",
    "Summary": "خلاصه",
    "This password signs in to the dashboard and reopens setup. There is no default password: "
    "choose one now.": (
        "با این گذرواژه وارد داشبورد می‌شوید و راه‌اندازی را دوباره باز می‌کنید. گذرواژهٔ پیش‌فرض"
        " وجود ندارد: همین حالا یکی انتخاب کنید."
    ),
    "A password is already set; a new one replaces it and signs out other devices.": (
        "گذرواژه‌ای از قبل هست؛ گذرواژهٔ تازه جای آن را می‌گیرد و دستگاه‌های دیگر را خارج می‌کند."
    ),
    "New password": "گذرواژهٔ تازه",
    "Repeat the password": "تکرار گذرواژه",
    "At least 10 characters mixing letters, digits and symbols, or a passphrase of 16 "
    "characters or more.": (
        "دست‌کم ۱۰ نویسه با ترکیبی از حرف، رقم و نماد، یا یک عبارت عبور ۱۶ نویسه‌ای یا بلندتر."
    ),
    "Save and continue": "ذخیره و ادامه",
    "Use at least {n} characters (this one has {m}).": "دست‌کم {n} نویسه به کار ببرید (این یکی {m} نویسه دارد).",
    "Use at most {n} characters.": "حداکثر {n} نویسه به کار ببرید.",
    "This password contains a common word or the box's name; choose another.": (
        "این گذرواژه یک واژهٔ رایج یا نام دستگاه را دارد؛ گذرواژهٔ دیگری انتخاب کنید."
    ),
    "Use more different characters.": "نویسه‌های گوناگون‌تری به کار ببرید.",
    "Mix at least three of: lower case, upper case, digits, symbols — or use a passphrase of "
    "{n} characters or more.": (
        "دست‌کم سه مورد از این‌ها را ترکیب کنید: حرف کوچک، حرف بزرگ، رقم، نماد — یا یک عبارت"
        " عبور {n} نویسه‌ای یا بلندتر به کار ببرید."
    ),
    "The two passwords differ.": "دو گذرواژه یکسان نیستند.",
    "Address": "نشانی",
    "Host name": "نام میزبان",
    "Gateway": "دروازه",
    "DNS servers": "سرورهای DNS",
    "Link speed": "سرعت اتصال",
    "Interface": "رابط",
    "unknown": "نامعلوم",
    "dhcp": "DHCP",
    "static": "ثابت",
    "Keep these settings and continue": "همین تنظیمات بماند و ادامه",
    "Use a static address instead": "به جای آن نشانی ثابت به کار برود",
    "Ask the network administrator for a free address. After saving, the box moves to it and "
    "this page must be opened at the new address.": (
        "یک نشانی آزاد از مدیر شبکه بگیرید. پس از ذخیره، دستگاه به آن نشانی می‌رود و این صفحه"
        " را باید در نشانی تازه باز کنید."
    ),
    "IP address": "نشانی IP",
    "Prefix length": "طول پیشوند",
    "24 means 255.255.255.0": "۲۴ یعنی 255.255.255.0",
    "IP addresses separated by spaces": "نشانی‌های IP با فاصله از هم",
    "Use this static address": "این نشانی ثابت به کار برود",
    "Use DHCP": "استفاده از DHCP",
    "The box is moving to its new address. In a few seconds, open:": (
        "دستگاه به نشانی تازه‌اش می‌رود. چند ثانیه دیگر این را باز کنید:"
    ),
    "The box asks the network for an address again (DHCP). Find it by its name:": (
        "دستگاه دوباره از شبکه نشانی می‌گیرد (DHCP). آن را با نامش پیدا کنید:"
    ),
    "Continue": "ادامه",
    "Enter an IPv4 address such as 192.168.1.50.": "یک نشانی IPv4 مانند 192.168.1.50 وارد کنید.",
    "Enter the prefix length, 8 to 30 (24 is 255.255.255.0).": (
        "طول پیشوند را وارد کنید، از ۸ تا ۳۰ (۲۴ یعنی 255.255.255.0)."
    ),
    "This address cannot be used for a device (network, broadcast or reserved).": (
        "این نشانی برای یک دستگاه قابل استفاده نیست (نشانی شبکه، همگانی یا رزروشده)."
    ),
    "The gateway must be in the same network as the address.": "دروازه باید در همان شبکهٔ نشانی باشد.",
    "The gateway cannot be the box's own address.": "دروازه نمی‌تواند نشانی خود دستگاه باشد.",
    "Enter DNS servers as IP addresses, separated by spaces.": (
        "سرورهای DNS را به صورت نشانی IP و با فاصله از هم وارد کنید."
    ),
    "Enter at least one DNS server.": "دست‌کم یک سرور DNS وارد کنید.",
    "The box could not change its network: {why}": "دستگاه نتوانست شبکه‌اش را تغییر دهد: {why}",
    "How the PACS and the modalities reach this box, and how the box reaches the PACS.": (
        "PACS و دستگاه‌های تصویربرداری چگونه به این دستگاه می‌رسند و این دستگاه چگونه به PACS."
    ),
    "This box": "این دستگاه",
    "AE title of this box": "AE title این دستگاه",
    "Up to 16 characters: letters, digits, spaces, - _ . (no backslash).": (
        "حداکثر ۱۶ نویسه: حرف، رقم، فاصله، ‎- _ .‎ (بدون بک‌اسلش)."
    ),
    "DICOM port of this box": "درگاه DICOM این دستگاه",
    "104 is DICOM's usual port; 11112 is common too.": "درگاه معمول DICOM ‏104 است؛ 11112 هم رایج است.",
    "The PACS": "PACS",
    "PACS address": "نشانی PACS",
    "Its IP address or host name.": "نشانی IP یا نام میزبان آن.",
    "PACS port": "درگاه PACS",
    "PACS AE title": "AE title ‏PACS",
    "Test:": "آزمون:",
    "Test (C-ECHO)": "آزمون (C-ECHO)",
    "Other senders (optional)": "فرستنده‌های دیگر (اختیاری)",
    "Modalities allowed to send, one per line: AE title, a space, IP address or network": (
        "دستگاه‌هایی که اجازهٔ ارسال دارند، هر کدام در یک سطر: AE title، یک فاصله، نشانی IP یا شبکه"
    ),
    "The PACS is allowed automatically.": "PACS خودبه‌خود مجاز است.",
    "This box now accepts any sender (allow_any_peer in its configuration).": (
        "این دستگاه اکنون از هر فرستنده‌ای می‌پذیرد (allow_any_peer در پیکربندی آن)."
    ),
    "For the PACS administrator": "برای مدیر PACS",
    "Add this box to the PACS as a DICOM node (destination):": (
        "این دستگاه را در PACS به عنوان یک گره DICOM (مقصد) اضافه کنید:"
    ),
    "AE title": "AE title",
    "Port": "درگاه",
    "Then use the PACS's Verify or Echo on it, or send one study. This page shows it when it "
    "arrives:": (
        "سپس از Verify یا Echo در PACS روی آن استفاده کنید یا یک مطالعه بفرستید. این صفحه رسیدن"
        " آن را نشان می‌دهد:"
    ),
    "Nothing received yet.": "هنوز چیزی نرسیده است.",
    "echo": "اکو",
    "objects stored": "شیء ذخیره شد",
    "Enter an AE title.": "یک AE title وارد کنید.",
    "An AE title has at most 16 characters; this one has {n}.": (
        "AE title حداکثر ۱۶ نویسه دارد؛ این یکی {n} نویسه دارد."
    ),
    "An AE title cannot contain a backslash or control characters.": (
        "AE title نمی‌تواند بک‌اسلش یا نویسهٔ کنترلی داشته باشد."
    ),
    "Use plain letters, digits and - _ . only (no accents, no Persian letters).": (
        "فقط حروف لاتین ساده، رقم و ‎- _ .‎ به کار ببرید (بدون اعراب و بدون حروف فارسی)."
    ),
    "Enter a port number, 1 to 65535.": "شمارهٔ درگاه را وارد کنید، از ۱ تا ۶۵۵۳۵.",
    "Enter the PACS's IP address or host name.": "نشانی IP یا نام میزبان PACS را وارد کنید.",
    "This is neither an IP address nor a host name.": "این نه نشانی IP است و نه نام میزبان.",
    "The box cannot resolve {host}; enter its IP address.": (
        "دستگاه نمی‌تواند نشانی {host} را پیدا کند؛ نشانی IP آن را وارد کنید."
    ),
    "Line {n}: write the AE title, a space, then its IP address or network.": (
        "سطر {n}: AE title، یک فاصله و سپس نشانی IP یا شبکهٔ آن را بنویسید."
    ),
    "Line {n}: {why}": "سطر {n}: {why}",
    "Line {n}: {addr} is not an IP address or network (such as 10.1.2.0/24).": (
        "سطر {n}: {addr} نشانی IP یا شبکه (مانند 10.1.2.0/24) نیست."
    ),
    "Port {n} is the web page's port; choose another.": "درگاه {n} درگاه همین صفحهٔ وب است؛ درگاه دیگری انتخاب کنید.",
    "These settings cannot be used: {why}": "این تنظیمات قابل استفاده نیستند: {why}",
    "The box cannot listen there: {why}": "دستگاه نمی‌تواند روی آن گوش دهد: {why}",
    "Saved. The box now answers as {ae} on port {port}.": (
        "ذخیره شد. دستگاه اکنون با نام {ae} روی درگاه {port} پاسخ می‌دهد."
    ),
    "No answer: {why}": "پاسخی نیامد: {why}",
    "Nothing answers at {host} port {port} ({why}). Check the address and port, and that the "
    "PACS is on.": (
        "در {host} درگاه {port} چیزی پاسخ نمی‌دهد ({why}). نشانی و درگاه را بررسی کنید و اینکه"
        " PACS روشن باشد."
    ),
    "The PACS answered the C-ECHO with status 0x{status} in {ms} ms.": (
        "PACS به C-ECHO با وضعیت 0x{status} در {ms} میلی‌ثانیه پاسخ داد."
    ),
    "Enrolled. The hub knows this box as node {node}.": (
        "ثبت شد. هاب این دستگاه را با نام گره {node} می‌شناسد."
    ),
    "Hub": "هاب",
    "Node": "گره",
    "Enrol with a hub": "ثبت در یک هاب",
    "Enrol again, with another hub": "ثبت دوباره، در هاب دیگر",
    "In the hub's portal, add a node: it shows a one-time pairing code. The hub's CA "
    "certificate comes from the same portal.": (
        "در درگاه وب هاب یک گره اضافه کنید: یک کد جفت‌سازی یک‌بارمصرف نشان می‌دهد. گواهی CA"
        " هاب هم از همان‌جا می‌آید."
    ),
    "Hub address": "نشانی هاب",
    "Pairing code": "کد جفت‌سازی",
    "Hub CA certificate (PEM file)": "گواهی CA هاب (پروندهٔ PEM)",
    "or paste it here": "یا آن را اینجا بچسبانید",
    "Enrol": "ثبت",
    "Skip for now": "فعلاً رد شو",
    "Enter the hub's address starting with https://": "نشانی هاب را که با https:// آغاز می‌شود وارد کنید",
    "Enter the pairing code shown in the hub's portal.": "کد جفت‌سازی نشان‌داده‌شده در درگاه هاب را وارد کنید.",
    "Choose the hub's CA certificate file (PEM).": "پروندهٔ گواهی CA هاب (PEM) را انتخاب کنید.",
    "This file is too large to be a CA certificate.": "این پرونده برای یک گواهی CA بیش از حد بزرگ است.",
    "This file is not a PEM certificate (it should begin with -----BEGIN).": (
        "این پرونده گواهی PEM نیست (باید با ‎-----BEGIN‎ آغاز شود)."
    ),
    "This certificate is not a CA certificate; ask for the hub's CA file.": (
        "این گواهی، گواهی CA نیست؛ پروندهٔ CA هاب را درخواست کنید."
    ),
    "The hub's certificate is not signed by this CA: check that the CA file is the one from "
    "this hub's portal.": (
        "گواهی هاب با این CA امضا نشده است: بررسی کنید که پروندهٔ CA از درگاه همین هاب باشد."
    ),
    "The box cannot reach the hub: {why}": "دستگاه به هاب دسترسی ندارد: {why}",
    "The hub refused the pairing code: {why}": "هاب کد جفت‌سازی را نپذیرفت: {why}",
    "Enrolment failed: {why}": "ثبت ناموفق بود: {why}",
    "Box": "دستگاه",
    "set": "تنظیم شده",
    "not set": "تنظیم نشده",
    "This page": "این صفحه",
    "Allowed senders": "فرستنده‌های مجاز",
    "Seen from the PACS": "دیده‌شده از PACS",
    "enrolled": "ثبت شده",
    "not enrolled": "ثبت نشده",
    "Finish setup": "پایان راه‌اندازی",
    "Setup is closed. To change settings, reopen it from Settings.": (
        "راه‌اندازی بسته است. برای تغییر تنظیمات، آن را از «تنظیمات» دوباره باز کنید."
    ),
    "Setup is complete. This is the box's dashboard.": "راه‌اندازی کامل شد. این داشبورد دستگاه است.",
    # -- the dashboard
    "Main": "اصلی",
    "Dashboard": "داشبورد",
    "Audit log": "گزارش ممیزی",
    "Settings": "تنظیمات",
    "Health": "سلامت",
    "Front panel": "پنل جلو",
    "Queue": "صف",
    "Studies waiting": "مطالعه‌های در انتظار",
    "Oldest waiting": "قدیمی‌ترین در انتظار",
    "Size waiting": "حجم در انتظار",
    "Last hour": "یک ساعت گذشته",
    "{n} objects received, {m} studies delivered": "{n} شیء دریافت شد، {m} مطالعه تحویل شد",
    "Objects received per 5 minutes over the last hour (newest on the right).": (
        "شیءهای دریافتی در هر ۵ دقیقه در یک ساعت گذشته (تازه‌ترین در سمت راست)."
    ),
    "Recent studies": "مطالعه‌های اخیر",
    "Patient": "بیمار",
    "Date": "تاریخ",
    "Objects": "شیءها",
    "State": "وضعیت",
    "Medis code": "کد مدیس",
    "Reveal": "نمایش",
    "not yet": "هنوز نه",
    "No studies yet.": "هنوز مطالعه‌ای نیست.",
    "Download jobs": "کارهای دانلود",
    "This firmware has no download jobs.": "این نرم‌افزار کار دانلود ندارد.",
    "No download jobs.": "کار دانلودی نیست.",
    "Disk": "دیسک",
    "used": "استفاده‌شده",
    "{free} free of {total}; new studies are refused below {floor} free.": (
        "{free} آزاد از {total}؛ زیر {floor} فضای آزاد، مطالعه‌های تازه پذیرفته نمی‌شوند."
    ),
    "reachable": "در دسترس",
    "unreachable": "در دسترس نیست",
    "not contacted yet": "هنوز تماسی نبوده",
    "PACS": "PACS",
    "No PACS is set up yet.": "هنوز PACS تنظیم نشده است.",
    "This box:": "این دستگاه:",
    "More": "بیشتر",
    "Diagnostics bundle": "بستهٔ عیب‌یابی",
    "Study": "مطالعه",
    "Shown to you now and recorded in the audit log. Give it only to this patient.": (
        "اکنون به شما نشان داده شد و در گزارش ممیزی ثبت شد. آن را فقط به همین بیمار بدهید."
    ),
    "Print the patient slip": "چاپ برگهٔ بیمار",
    "Back to the dashboard": "بازگشت به داشبورد",
    "No slip yet: the study has no code or the box no hub.": (
        "هنوز برگه‌ای نیست: مطالعه کد ندارد یا دستگاه به هاب وصل نیست."
    ),
    "Export (CSV)": "خروجی (CSV)",
    "Time": "زمان",
    "Who": "چه کسی",
    "Action": "کار",
    "Code": "کد",
    "Nothing recorded yet.": "هنوز چیزی ثبت نشده است.",
    "The audit log cannot be written to the disk: its newest records wait in memory until it "
    "can.": "گزارش ممیزی روی دیسک نوشته نمی‌شود: تازه‌ترین رکوردهای آن تا آن زمان در حافظه می‌مانند.",
    "audit records lost": "رکوردهای گمشدهٔ گزارش ممیزی",
    "Change settings": "تغییر تنظیمات",
    "Network, DICOM and hub settings are changed in the setup wizard. Reopening it needs the "
    "admin password (or the button on the box).": (
        "تنظیمات شبکه، DICOM و هاب در راه‌انداز تغییر می‌کنند. باز کردن دوبارهٔ آن گذرواژهٔ مدیر"
        " (یا دکمهٔ روی دستگاه) را لازم دارد."
    ),
    "Reopen setup": "باز کردن دوبارهٔ راه‌اندازی",
    "Change the admin password": "تغییر گذرواژهٔ مدیر",
    "Current password": "گذرواژهٔ کنونی",
    "Change the password": "تغییر گذرواژه",
    "Password changed. Other signed-in devices are signed out.": (
        "گذرواژه تغییر کرد. دستگاه‌های دیگری که وارد شده بودند خارج شدند."
    ),
    "Factory reset": "بازنشانی کارخانه",
    "Hold the button on the box for about 10 seconds: the password, the saved settings and the "
    "hub enrolment are erased. Studies not yet delivered are kept.": (
        "دکمهٔ روی دستگاه را حدود ۱۰ ثانیه نگه دارید: گذرواژه، تنظیمات ذخیره‌شده و ثبت در هاب پاک"
        " می‌شوند. مطالعه‌هایی که هنوز تحویل نشده‌اند می‌مانند."
    ),
    "Something went wrong": "مشکلی پیش آمد",
    "Back to the start": "بازگشت به آغاز",
    "{n} s": "{n} ثانیه",
    "{n} min": "{n} دقیقه",
    "{h} h {m} min": "{h} ساعت و {m} دقیقه",
    "{n} days": "{n} روز",
    # -- states: health, LEDs and their patterns, studies, jobs
    "healthy": "سالم",
    "degraded": "نیازمند توجه",
    "failed": "از کار افتاده",
    "unclaimed": "راه‌اندازی نشده",
    "setup_open": "پنجرهٔ راه‌اندازی باز",
    "booting": "در حال آغاز",
    "updating": "در حال به‌روزرسانی",
    "locating": "در حال نشان دادن مکان",
    "health": "سلامت",
    "activity": "فعالیت",
    "uplink": "اتصال به هاب",
    "steady": "روشن",
    "slow": "چشمک آهسته",
    "fast": "چشمک تند",
    "off": "خاموش",
    "wink": "چشمک کوتاه",
    "double": "چشمک دوتایی",
    "dips": "روشن با خاموشی کوتاه",
    "wig": "چشمک نوبتی",
    "wag": "چشمک نوبتی",
    "flicker": "سوسو",
    "chase_1": "چراغ دونده",
    "chase_2": "چراغ دونده",
    "chase_3": "چراغ دونده",
    "received": "دریافت شده",
    "complete": "کامل",
    "queued": "در صف",
    "uploading": "در حال بارگذاری",
    "delivered": "تحویل شده",
    "running": "در حال اجرا",
    "saved": "ذخیره شده",
    "working normally": "عادی کار می‌کند",
    "working, but something needs attention": "کار می‌کند، اما چیزی نیاز به توجه دارد",
    "waiting for setup": "در انتظار راه‌اندازی",
    "setup window open": "پنجرهٔ راه‌اندازی باز است",
    "starting": "در حال آغاز",
    "not working: needs a technician": "کار نمی‌کند: به تکنسین نیاز دارد",
    "installing an update: do not unplug": "در حال نصب به‌روزرسانی: برق را قطع نکنید",
    "showing the locate pattern": "در حال نشان دادن الگوی مکان‌یابی",
    "the appliance is starting": "دستگاه در حال آغاز است",
    "not enrolled with a Medix hub yet": "هنوز در هاب مدیکس ثبت نشده",
    "the setup window is open": "پنجرهٔ راه‌اندازی باز است",
    "an update is being installed": "به‌روزرسانی در حال نصب است",
    "someone asked the box to show where it is": "کسی خواسته که دستگاه مکانش را نشان دهد",
    "the hub cannot be reached": "هاب در دسترس نیست",
    "the oldest undelivered study is too old": "قدیمی‌ترین مطالعهٔ تحویل‌نشده بیش از حد قدیمی است",
    "the storage device is nearly full": "حافظه تقریباً پر است",
    "the PACS does not answer C-ECHO": "PACS به C-ECHO پاسخ نمی‌دهد",
    "the node certificate expires soon": "گواهی گره به‌زودی منقضی می‌شود",
    "free space is below the floor: new studies refused": (
        "فضای آزاد زیر حد پایین است: مطالعه‌های تازه پذیرفته نمی‌شوند"
    ),
    "the storage device cannot be written": "در حافظه نمی‌توان نوشت",
    "the node certificate has expired": "گواهی گره منقضی شده است",
    "disk at its floor: new studies are refused": "دیسک به حد پایین رسیده: مطالعه‌های تازه پذیرفته نمی‌شوند",
    "hub unreachable": "هاب در دسترس نیست",
    "the setup wizard is not finished": "راه‌اندازی هنوز تمام نشده است",
    "not enrolled with a hub": "در هاب ثبت نشده",
    # -- audit actions
    "claim": "تحویل دستگاه",
    "claim refused": "تحویل رد شد",
    "signed in": "ورود",
    "sign-in refused": "ورود رد شد",
    "password refused": "گذرواژه رد شد",
    "signed out": "خروج",
    "setup reopened": "راه‌اندازی دوباره باز شد",
    "setup reopen refused": "باز کردن دوبارهٔ راه‌اندازی رد شد",
    "password set": "گذرواژه تنظیم شد",
    "password changed": "گذرواژه تغییر کرد",
    "network changed": "شبکه تغییر کرد",
    "DICOM settings changed": "تنظیمات DICOM تغییر کرد",
    "PACS echo": "اکوی PACS",
    "hub step skipped": "مرحلهٔ هاب رد شد",
    "hub step kept": "مرحلهٔ هاب بدون تغییر",
    "enrolment failed": "ثبت ناموفق",
    "setup finished": "راه‌اندازی پایان یافت",
    "code revealed": "کد نمایش داده شد",
    "slip printed": "برگه چاپ شد",
    "audit log exported": "خروجی گزارش ممیزی",
    "diagnostics downloaded": "بستهٔ عیب‌یابی دریافت شد",
    # -- system update (settings)
    "System update": "به‌روزرسانی سامانه",
    "Running": "نسخه",
    "system {slot}": "سامانهٔ {slot}",
    "Last update": "آخرین به‌روزرسانی",
    "Details": "جزئیات",
    "Self-test": "خودآزمایی",
    "passed": "موفق",
    "did not pass": "ناموفق",
    "Update file": "فایل به‌روزرسانی",
    "Install the update": "نصب به‌روزرسانی",
    "An update from the hub is installed by itself. Here you can install an update file (.raucb) from the AFRA support desk: the box checks its signature, installs it next to the running system, restarts into it and keeps it only if it passes its self-test. Studies on the box are never touched.": (
        "به‌روزرسانی‌ای که از هاب برسد خودکار نصب می‌شود. اینجا می‌توانید فایل به‌روزرسانی (⁦.raucb⁩) را که پشتیبانی AFRA داده است نصب کنید: دستگاه امضای آن را بررسی می‌کند، آن را کنار سامانهٔ در حال اجرا نصب می‌کند، با آن راه‌اندازی دوباره می‌شود و فقط اگر از خودآزمایی سربلند بیرون بیاید نگهش می‌دارد. به مطالعه‌های روی دستگاه هرگز دست زده نمی‌شود."
    ),
    "Updates are installed on an AFRA box; this one runs from a development checkout.": (
        "به‌روزرسانی روی دستگاه AFRA نصب می‌شود؛ این نسخه از کد توسعه اجرا می‌شود."
    ),
    "An update is already under way.": "یک به‌روزرسانی هم‌اکنون در جریان است.",
    "Choose the update file (it ends in .raucb).": "فایل به‌روزرسانی را انتخاب کنید (پسوند آن ⁦.raucb⁩ است).",
    "The file was not taken: {why}": "فایل پذیرفته نشد: {why}",
    "The update was refused: {why}": "به‌روزرسانی رد شد: {why}",
    "The update was checked and is being installed. The box restarts when it is done; this page shows how it goes.": (
        "به‌روزرسانی بررسی شد و در حال نصب است. دستگاه پس از پایان کار دوباره راه‌اندازی می‌شود؛ این صفحه روند کار را نشان می‌دهد."
    ),
    "No update has been installed on this box yet.": "هنوز هیچ به‌روزرسانی‌ای روی این دستگاه نصب نشده است.",
    "Fetching {version} from the hub: {progress}%.": "در حال دریافت {version} از هاب: {progress}٪.",
    "Checking the update's signature.": "در حال بررسی امضای به‌روزرسانی.",
    "Installing {version}: {progress}%. Do not unplug the box.": "در حال نصب {version}: {progress}٪. دستگاه را از برق نکشید.",
    "{version} is installed; the box restarts into it. Do not unplug the box.": (
        "{version} نصب شد؛ دستگاه با آن دوباره راه‌اندازی می‌شود. دستگاه را از برق نکشید."
    ),
    "{version} is testing itself. Do not unplug the box.": "{version} در حال خودآزمایی است. دستگاه را از برق نکشید.",
    "{version} passed its self-test and is kept.": "{version} از خودآزمایی گذشت و نگه داشته شد.",
    "{version} failed its self-test: the box went back to {previous}.": (
        "{version} در خودآزمایی ناموفق بود: دستگاه به {previous} بازگشت."
    ),
    "The update to {version} could not be installed.": "به‌روزرسانی به {version} نصب نشد.",
    "The update was refused.": "به‌روزرسانی رد شد.",
    "update refused": "به‌روزرسانی رد شد",
    "update started": "نصب به‌روزرسانی آغاز شد",
}
